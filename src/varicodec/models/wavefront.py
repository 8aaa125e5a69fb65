"""Wavefront coding of the joint model's latent (issue 15).

The joint model (Minnen et al. 2018, CompressAI's
``JointAutoregressiveHierarchicalPriors``) predicts each latent position's Gaussian
from ``h_s``'s output and a causal context, a masked 5×5 convolution over the
positions decoded before it. CompressAI codes the latent one position at a time, so
decoding a Kodak image (a 32×48 latent) runs the context and entropy-parameter
networks 1 536 times, each on a single position.

Under a type-A mask, position ``(h, w)`` depends on positions ``(h + Δh, w + Δw)``
with ``Δh < 0`` (any ``Δw`` within the kernel) or ``Δh = 0, Δw < 0``. Number the
positions ``t = w + k·h``: every dependency has a smaller ``t`` exactly when
``Δw + k·Δh < 0`` for all taps, i.e. ``k > Δw / −Δh``. The 5×5 kernel has the tap
``(Δh, Δw) = (−1, +2)``, so ``k = 3`` (``k = 2`` would put ``(h − 1, w + 2)`` on the
same wavefront as ``(h, w)``)::

    t = w + 3h     0  1  2  3  4  5  6  7
                   3  4  5  6  7  8  9 10
                   6  7  8  9 10 11 12 13

All positions of one wavefront are independent given the earlier wavefronts, so
:class:`WavefrontCoder` runs the context model (as one matrix product over the
mask's non-zero taps) and the entropy-parameter network batched over a whole
wavefront: ``W + 3(H − 1)`` steps (141 for a 32×48 latent) instead of ``H·W``.

Coding order: wavefront by wavefront (``t`` ascending), inside a wavefront by row
(ascending), inside a position by channel. The encoder hands all symbols to one
``RansEncoder.encode_with_indexes`` call; the decoder calls
``RansDecoder.decode_stream`` once per wavefront. Encoder and decoder run the same
function with the same tensor shapes to predict the Gaussians, so they compute the
same means and scales. The symbols are those of CompressAI's sequential coder;
its 25-tap convolution on one position sums in another order than the batched
product here, so the means (and ``ŷ = symbol + mean``) may differ from the
sequential coder's in the last bits of a float32 (tests/test_wavefront.py measures it).

The model's ``GaussianConditional`` is used through its instance methods
(``build_indexes``, ``quantize``, ``dequantize``), so the index guard and symbol
check of :class:`~varicodec.models.codec_model.VaricodecModel`, the modulator's hooks
on ``g_a`` / ``g_s`` and the gates of ``h_s`` work unchanged: this coder replaces
only CompressAI's position-by-position loops.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from compressai.ans import RansDecoder, RansEncoder
from compressai.models import JointAutoregressiveHierarchicalPriors
from torch import Tensor, nn

__all__ = ["WavefrontCoder", "supports_wavefront", "wavefront_slope", "wavefronts"]


def supports_wavefront(net: nn.Module) -> bool:
    """Whether ``net`` codes its latent with CompressAI's joint autoregressive loop
    (``JointAutoregressiveHierarchicalPriors`` and its subclasses), which
    :class:`WavefrontCoder` replaces."""
    return isinstance(net, JointAutoregressiveHierarchicalPriors)


def wavefront_slope(mask: Tensor) -> int:
    """The smallest ``k`` such that every causal tap ``(Δh, Δw)`` of ``mask`` (a
    ``…×kh×kw`` 0/1 tensor, centre = the position being predicted) has
    ``Δw + k·Δh < 0``; 3 for CompressAI's 5×5 type-A mask."""
    kh, kw = mask.shape[-2:]
    taps = (mask != 0).reshape(-1, kh, kw).any(0).nonzero().tolist()
    k = 1
    for dy, dx in taps:
        dh, dw = dy - kh // 2, dx - kw // 2
        if dh > 0 or (dh == 0 and dw >= 0):
            raise ValueError(f"context mask is not causal (tap at {dh:+d}, {dw:+d})")
        if dh < 0:
            k = max(k, dw // -dh + 1)
    return k


def wavefronts(height: int, width: int, slope: int) -> list[tuple[Tensor, Tensor]]:
    """``(rows, columns)`` of the positions with ``w + slope·h = t`` for
    ``t = 0 … (width − 1) + slope·(height − 1)``, rows ascending (int64 tensors)."""
    out = []
    for t in range(width + slope * (height - 1)):
        lo = max(0, -(-(t - width + 1) // slope))  # ⌈(t − W + 1) / slope⌉
        rows = torch.arange(lo, min(height - 1, t // slope) + 1)
        out.append((rows, t - slope * rows))
    return out


class WavefrontCoder:
    """Codes a ``JointAutoregressiveHierarchicalPriors``'s latent in wavefront order.

    The same contract as the model's own ``compress(x) → {"strings": [y, z],
    "shape"}`` and ``decompress(strings, shape) → {"x_hat"}``, on the same model
    (no weights of its own): ``VaricodecModel`` calls one or the other.
    """

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        cp = net.context_prediction
        self.padding = int(cp.padding[0])
        k = cp.kernel_size[0]
        if cp.stride != (1, 1) or tuple(cp.kernel_size) != (k, k) \
                or tuple(cp.padding) != (k // 2, k // 2):
            raise ValueError("the wavefront coder needs a square, stride-1 context model "
                             "padded to keep the latent's size")
        mask = cp.mask
        self.slope = wavefront_slope(mask)
        taps = (mask != 0).reshape(-1, *mask.shape[-2:]).any(0).nonzero()
        self.tap_rows, self.tap_cols = taps[:, 0], taps[:, 1]

    # ------------------------------------------------------------ prediction
    def _context_weights(self, device) -> tuple[Tensor, Tensor]:
        """The masked context weights on the mask's taps as a ``(taps·M) × 2M`` matrix
        (rows: tap-major, channel inside), and the bias."""
        cp = self.net.context_prediction
        w = (cp.weight * cp.mask)[:, :, self.tap_rows, self.tap_cols]  # 2M × M × taps
        return w.permute(2, 1, 0).reshape(-1, w.shape[0]).contiguous().to(device), \
            cp.bias.to(device)

    def _gaussians(self, y_hat: Tensor, params: Tensor, wave: _Wave, weight: Tensor,
                   bias: Tensor) -> tuple[Tensor, Tensor]:
        """Scales and means (``P × M``) of one wavefront's ``P`` positions.

        ``y_hat``: ``(H + 2p)(W + 2p) × M``, the padded latent decoded so far (zeros
        elsewhere), position-major so that a position's channels are contiguous;
        ``params``: ``HW × 2M``, ``h_s``'s output.
        """
        m = y_hat.shape[-1]
        patch = y_hat.index_select(0, wave.patch).view(wave.pos.numel(), -1)  # P × taps·M
        ctx = torch.addmm(bias, patch, weight)  # P × 2M
        gp = _pointwise(self.net.entropy_parameters,
                        torch.cat((params.index_select(0, wave.pos), ctx), 1))
        return gp[:, :m].contiguous(), gp[:, m:].contiguous()

    def _tables(self) -> tuple[list, list, list]:
        """The coder's CDF tables, lengths and offsets as lists. ``quantized_cdf`` pads
        every table to the longest (3 000+ entries for the widest scale, 5 for the
        narrowest), and the rANS binding converts every entry of every table it is
        handed on every call: each list keeps only its table's ``cdf_length`` entries,
        all the coder reads (6.2 M entries converted per Kodak decode otherwise)."""
        gc = self.net.gaussian_conditional
        lengths = gc.cdf_length.reshape(-1).int().tolist()
        cdf = [row[:n] for row, n in zip(gc.quantized_cdf.tolist(), lengths)]
        return cdf, lengths, gc.offset.reshape(-1).int().tolist()

    def _setup(self, params: Tensor):
        """What both sides need: the wavefronts, context weights, tables, the padded
        position-major latent (``B × (H + 2p)(W + 2p) × M``, zeros) and ``params``
        position-major (``B × HW × 2M``)."""
        (height, width), p = params.shape[-2:], self.padding
        dev, padded_width = params.device, width + 2 * p
        waves = []
        for rows, cols in wavefronts(height, width, self.slope):
            # the patch of position (h, w) starts at (h, w) in padded coordinates
            patch = (rows[:, None] + self.tap_rows) * padded_width + cols[:, None] + self.tap_cols
            waves.append(_Wave((rows * width + cols).to(dev),
                               ((rows + p) * padded_width + cols + p).to(dev),
                               patch.reshape(-1).to(dev)))
        m = self.net.context_prediction.in_channels
        y_hat = params.new_zeros(params.shape[0], (height + 2 * p) * padded_width, m)
        params = params.flatten(2).transpose(1, 2).contiguous()
        return waves, self._context_weights(dev), self._tables(), y_hat, params

    # ------------------------------------------------------------ coding
    def compress(self, x: Tensor) -> dict:
        """Entropy-code ``x`` (B×3×H×W): ``{"strings": [y strings, z strings],
        "shape": z's H×W}``, one byte string per batch element in each list."""
        net = self.net
        y = net.g_a(x)
        z = net.h_a(y)
        z_strings = net.entropy_bottleneck.compress(z)
        z_hat = net.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        params = net.h_s(z_hat)
        if params.shape[-2:] != y.shape[-2:]:
            raise ValueError(f"h_s output {tuple(params.shape[-2:])} does not match the "
                             f"latent {tuple(y.shape[-2:])}")
        gc = net.gaussian_conditional
        waves, (weight, bias), (cdf, lengths, offsets), y_hat, params = self._setup(params)
        y = y.flatten(2).transpose(1, 2).contiguous()  # B × HW × M
        y_strings = []
        for b in range(y.shape[0]):
            symbols, scales = [], []
            for wave in waves:
                wave_scales, means = self._gaussians(y_hat[b], params[b], wave, weight, bias)
                scales.append(wave_scales.reshape(-1))
                s = gc.quantize(y[b].index_select(0, wave.pos), "symbols", means)
                y_hat[b].index_copy_(0, wave.padded, s.to(means.dtype) + means)
                symbols.append(s.reshape(-1))
            # the indexes are needed only now: one call for the whole latent, in coding
            # order (the index guard numbers the latents in the order it is shown them)
            indexes = gc.build_indexes(torch.cat(scales))
            y_strings.append(RansEncoder().encode_with_indexes(
                torch.cat(symbols).tolist(), indexes.tolist(), cdf, lengths, offsets))
        return {"strings": [y_strings, z_strings], "shape": z.shape[-2:]}

    def decompress(self, strings: list[list[bytes]], shape) -> dict:
        """Inverse of :meth:`compress`: ``{"x_hat"}`` (B×3×H×W, clamped to [0, 1])."""
        if len(strings) != 2:
            raise ValueError(f"expected the y and z streams, got {len(strings)} streams")
        net = self.net
        z_hat = net.entropy_bottleneck.decompress(strings[1], shape)
        params = net.h_s(z_hat)
        gc, p = net.gaussian_conditional, self.padding
        (height, width) = params.shape[-2:]
        waves, (weight, bias), (cdf, lengths, offsets), y_hat, params = self._setup(params)
        for b, string in enumerate(strings[0]):
            decoder = RansDecoder()
            decoder.set_stream(string)
            for wave in waves:
                scales, means = self._gaussians(y_hat[b], params[b], wave, weight, bias)
                # only the tables this wavefront uses: the binding copies every table
                # it is given on each call, and most wavefronts use a few of the 64
                # (a table of the 64 instead of torch.unique: the same sorted tables and
                # local indexes at a fraction of the cost per call)
                idx = gc.build_indexes(scales).reshape(-1).cpu().numpy()
                present = np.zeros(len(cdf), dtype=bool)
                present[idx] = True
                used = np.flatnonzero(present).tolist()
                local = (np.cumsum(present) - 1)[idx]
                values = decoder.decode_stream(
                    local.tolist(), [cdf[i] for i in used],
                    [lengths[i] for i in used], [offsets[i] for i in used])
                s = torch.from_numpy(np.array(values, dtype=np.int32)).to(means.device)
                y_hat[b].index_copy_(0, wave.padded, gc.dequantize(s.view_as(means), means))
        y_hat = y_hat.view(len(strings[0]), height + 2 * p, width + 2 * p, -1)
        # the latent is stored position-major, so the N×C×H×W view is channels-last
        # already: g_s takes it as it is (oneDNN's channels-last kernels are faster on
        # the CPU than NCHW ones, and give the same output here; see joint-speed.md)
        y_hat = y_hat[:, p:p + height, p:p + width].permute(0, 3, 1, 2)
        y_hat = y_hat.contiguous(memory_format=torch.channels_last)
        return {"x_hat": net.g_s(y_hat).clamp_(0, 1).contiguous()}


class _Wave(NamedTuple):
    """Flat indexes of one wavefront's ``P`` positions."""

    pos: Tensor  #: into the H×W latent, ``(P,)``
    padded: Tensor  #: into the padded latent, ``(P,)``
    patch: Tensor  #: the context taps into the padded latent, ``(P · taps,)``, position-major


#: element-wise layers that :func:`_pointwise` applies to rows as they are
_ELEMENTWISE = (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.Identity)


def _pointwise(net: nn.Module, rows: Tensor) -> Tensor:
    """``net`` (a network of 1×1 convolutions, as the entropy-parameter network is)
    applied to ``rows`` (``P × C_in``, one position per row): ``P × C_out``.

    A ``Sequential`` of 1×1 convolutions and element-wise activations without hooks
    runs as matrix products (a 1×1 convolution over a handful of positions is 2-3×
    slower); anything else, or a network with hooks (tests that perturb the
    predicted parameters), runs through the module on a ``P × C × 1 × 1`` batch.
    """
    layers = list(net.children()) if isinstance(net, nn.Sequential) else None
    if layers is None or _hooked(net) or not all(
            (isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
             and not _hooked(m)) or (type(m) in _ELEMENTWISE and not _hooked(m))
            for m in layers):
        return net(rows[:, :, None, None])[:, :, 0, 0]
    for m in layers:
        rows = nn.functional.linear(rows, m.weight[:, :, 0, 0], m.bias) \
            if isinstance(m, nn.Conv2d) else m(rows)
    return rows


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)
