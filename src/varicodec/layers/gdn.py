"""GDN / IGDN without the temporaries: CompressAI's layer, computed in place at inference.

CompressAI's ``GDN.forward`` allocates three image-sized tensors per call (``x**2``,
the square root of the norm, the product). At inference the last two can reuse the
norm's memory; the arithmetic is the same operations in the same order, so the output
is bit for bit CompressAI's (``tests/test_gdn.py``). On this project's 2-core CPU
that makes the synthesis transform of the joint model about 1.1× faster
(docs/results/joint-speed.md).

The 1×1 convolution of a channels-last float32 CPU input runs through oneDNN
(``torch.mkldnn_convolution``) at every thread count. ``F.conv2d`` does the same from
two threads on, but on one thread it hands a 1×1 convolution of a batch under 16 to
its plain matrix product, which is 2.2× slower here (192 channels at 256×384: 72 → 32
ms) and, from 256 channels on, sums in another order, so that CompressAI's layer gives
other low bits on one thread than on two. Through oneDNN the output is the same on
any thread count, and bit for bit ``F.conv2d``'s two-thread output (and its
one-thread output at 128 and 192 channels, the widths of our models; the tests check 16
and 192 channels on one and two threads, and 320 channels across thread counts).
``benchmarks/gdn_onednn.py`` measures the effect on whole encodes and decodes.
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
        x2 = x * x
        norm = torch.mkldnn_convolution(x2, gamma, beta, (0, 0), (1, 1), (1, 1), 1) \
            if _onednn(x2, gamma) else F.conv2d(x2, gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        # under autocast the norm may be of lower precision than x: then x · norm
        # promotes, as CompressAI's layer does
        return norm.mul_(x) if norm.dtype == x.dtype else x * norm


#: run the 1×1 convolution through oneDNN where :func:`_onednn` allows (``False``: always
#: ``F.conv2d``, as before; benchmarks/gdn_onednn.py compares the two)
ONEDNN = True


def _onednn(x: Tensor, gamma: Tensor) -> bool:
    """Whether the norm's 1×1 convolution goes to oneDNN directly: a 4-d channels-last
    float32 CPU input, float32 parameters, no autocast, oneDNN available and enabled."""
    return (ONEDNN and x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
            and gamma.dtype == torch.float32 and x.shape[1] > 1
            and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu"))


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
