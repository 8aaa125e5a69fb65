"""GDN / IGDN without the temporaries: CompressAI's layer, computed in place at inference.

CompressAI's ``GDN.forward`` allocates three image-sized tensors per call (``x**2``,
the square root of the norm, the product). At inference the last two can reuse the
norm's memory; the arithmetic is the same operations in the same order, so the output
is bit for bit CompressAI's (``tests/test_gdn.py``). On this project's 2-core CPU
that makes the synthesis transform of the joint model about 1.1× faster
(docs/results/joint-speed.md).

A channels-last float32 input on the CPU (how the codec runs ``g_a`` and ``g_s``,
docs/results/layout.md) is done in tiles of rows (positions): ``x²``, the 1×1
convolution as the matrix product it is in that layout (``β + x² γᵀ``, the same
product oneDNN runs for the convolution), the root and the product, one tile after the
other, so that each tile's temporaries stay in the cache instead of three passes over
image-sized tensors. Bit for bit the same output on this machine (the test checks it);
the largest IGDN of the joint model's ``g_s`` (192 channels at 256×384) goes from 141
to 78 ms on one thread.
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
        if _tileable(x, gamma):
            return self._tiled(x, gamma.reshape(c, c), beta)
        norm = F.conv2d(x * x, gamma, beta)
        norm = norm.sqrt_() if self.inverse else norm.rsqrt_()
        # under autocast the norm may be of lower precision than x: then x · norm
        # promotes, as CompressAI's layer does
        return norm.mul_(x) if norm.dtype == x.dtype else x * norm

    def _tiled(self, x: Tensor, gamma: Tensor, beta: Tensor) -> Tensor:
        """The inference path on a channels-last ``x``, :data:`TILE_ROWS` positions at
        a time (``gamma``: ``C × C``)."""
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(-1, c)  # a view: channels-last is (B·H·W) × C
        out = torch.empty_like(rows)
        weight = gamma.t()
        for i in range(0, rows.shape[0], TILE_ROWS):
            xt, ot = rows[i:i + TILE_ROWS], out[i:i + TILE_ROWS]
            torch.addmm(beta, xt * xt, weight, out=ot)
            (ot.sqrt_() if self.inverse else ot.rsqrt_()).mul_(xt)
        return out.view(b, h, w, c).permute(0, 3, 1, 2)


#: positions per tile of :meth:`InplaceGDN._tiled` (192 channels: 0.75 MiB per temporary)
TILE_ROWS = 1024


def _tileable(x: Tensor, gamma: Tensor) -> bool:
    """Whether :meth:`InplaceGDN._tiled` applies: a 4-d channels-last float32 CPU
    tensor (parameters likewise), no autocast."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype == torch.float32
            and gamma.dtype == torch.float32 and x.shape[1] > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous() and not torch.is_autocast_enabled("cpu"))


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
