"""GDN / IGDN without the temporaries: CompressAI's layer, computed in place at inference.

CompressAI's ``GDN.forward`` allocates three image-sized tensors per call (``x**2``,
the square root of the norm, the product). At inference the last two can reuse the
norm's memory; the arithmetic is the same operations in the same order, so the output
is bit for bit CompressAI's (``tests/test_gdn.py``). On this project's 2-core CPU
that makes the synthesis transform of the joint model about 1.1× faster
(docs/results/joint-speed.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor, nn

__all__ = ["InplaceGDN", "use_inplace_gdn"]


class InplaceGDN(GDN):
    """:class:`compressai.layers.GDN` (and IGDN, ``inverse=True``), same parameters and
    state-dict keys; without autograd the square root and the product run in place."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        c = x.shape[1]
        beta = self.beta_reparam(self.beta)
        gamma = self.gamma_reparam(self.gamma).reshape(c, c, 1, 1)
        norm = F.conv2d(x * x, gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        # under autocast the norm may be of lower precision than x: then x · norm
        # promotes, as CompressAI's layer does
        return norm.mul_(x) if norm.dtype == x.dtype else x * norm


def use_inplace_gdn(net: nn.Module) -> int:
    """Turn every plain CompressAI ``GDN`` in ``net`` into an :class:`InplaceGDN` (the
    same module with the faster inference path; subclasses such as ``GDN1`` are left
    alone). Returns how many were changed."""
    count = 0
    for module in net.modules():
        if type(module) is GDN:
            module.__class__ = InplaceGDN
            count += 1
    return count
