"""FLOPs counted from what actually executes.

``torch.utils.flop_counter.FlopCounterMode`` intercepts every ATen operator
that runs and adds the FLOPs of the ones it has formulas for: convolutions
(including transposed ones), matrix products (``mm``, ``addmm``, ``bmm``)
and attention. Consequences that matter here:

* gated layers running their sparse path call the convolution with only the
  active input channels and the matching weight slice, so only processed
  channels are counted;
* CompressAI's GDN/IGDN computes its normalisation as a 1×1 ``conv2d``, so it
  is counted (our ``InplaceGDN`` calls oneDNN's convolution directly on a
  channels-last CPU input, ``aten.mkldnn_convolution``, which the counter has no
  formula for: :func:`count_flops` adds the convolution's); the gates' own 1-D
  channel convolution is counted too;
* element-wise work (activations, ``sqrt``, divisions, rounding) and the rANS
  coder are not counted — the usual convention of the compression literature.

Convention: one multiply–add is **2 FLOPs** (PyTorch's; some papers quote MACs,
which are half). Reduction ratios do not depend on the convention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

__all__ = ["count_flops", "parameter_count"]

T = TypeVar("T")


def count_flops(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, int]:
    """Run ``fn(*args, **kwargs)`` and return ``(its result, FLOPs executed)``."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        out = fn(*args, **kwargs)
    return out, int(counter.get_total_flops())


def _mkldnn_convolution_flop(x_shape, w_shape, bias_shape, padding, stride, dilation, groups,
                             *args, out_shape=None, **kwargs) -> int:
    """``aten.mkldnn_convolution``: the FLOPs of the same (non-transposed) convolution."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


#: formulas FlopCounterMode lacks for operators our layers call
_EXTRA_FORMULAS = {torch.ops.aten.mkldnn_convolution: _mkldnn_convolution_flop}


def parameter_count(model: nn.Module) -> int:
    """Number of learnable parameters (the entropy coder's tables are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())
