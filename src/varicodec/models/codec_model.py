"""`VaricodecModel`: a CompressAI model with the paper's plug-ins applied.

::

            ┌──────── BM: ⊙ m(λ) ───────┐            ┌── BM: ⊙ m⁻(λ) ──┐
    x ──► g_a ──► y·m ──► Q ──► rANS ──► … ──► ŷ·m ──► g_s ──► x̂
                   │                            ▲
                  h_a ──► Q ──► rANS ──► h_s ───┘  (scales / means)

    ECG: every convolution above whose input has > 3 channels gets an
    EnergyChannelGate in front of it (except the joint model's context and
    entropy-parameter networks, which decode position by position).

The architecture's own ``forward`` / ``compress`` / ``decompress`` (CompressAI)
are reused unchanged: the modulator is attached with hooks on ``g_a``'s output
and ``g_s``'s input, and gates replace the convolutions in place, so one
implementation serves every architecture of the registry. The one exception is
the joint model's position-by-position loop, which :mod:`.wavefront` replaces by
default (same symbols, coded wavefront by wavefront; ``order="sequential"`` keeps
CompressAI's loop, for files of format versions 1-2).

Decoding hazards, and what this class does about them:

* Gates in ``h_s`` decide the entropy model's scales. Encoder and decoder run
  ``h_s`` on the same integer-derived ``ẑ``, but float noise (thread count,
  machine) could flip a decision lying on its threshold, and a flipped scale
  breaks rANS decoding. The encoder therefore checks every ``h_s`` decision
  against a relative margin of 1e-4; if all clear it (the usual case) the side
  stream is empty and the decoder recomputes the gates, otherwise the encoder
  sends all ``h_s`` gate masks as a bit-packed side stream (counted in the rate)
  and the decoder uses them.
* The joint model's ``context_prediction`` and ``entropy_parameters`` run one
  latent position (one wavefront) at a time while decoding, so a gate over the
  whole decoded latent cannot exist there: they stay dense.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DesyncError
from ..layers import (
    BitrateModulator,
    EnergyChannelGate,
    LmbdaRange,
    gates_of,
    insert_gates,
    use_inplace_gdn,
)
from .registry import ARCHITECTURES, VARIANTS
from .wavefront import WavefrontCoder, supports_wavefront

__all__ = ["VaricodecModel", "ARCHITECTURES", "VARIANTS", "INDEX_MARGIN"]

DEFAULT_LMBDA_RANGE = (0.0018, 0.18)

#: coding orders of an autoregressive model's latent (``compress`` / ``decompress``)
CODING_ORDERS = ("wavefront", "sequential")

#: A latent whose predicted scale ``s`` lies within ``|s / t − 1| < INDEX_MARGIN`` of a
#: scale-table boundary ``t`` gets its index made explicit in the guard stream. The
#: largest difference between two CPU kernel sets measured on Kodak is 4.3e-6
#: (docs/results/portability.md), so 1e-5 leaves a factor of 2.3.
INDEX_MARGIN = 1e-5


class VaricodecModel(nn.Module):
    """One registry model: an architecture of :data:`~.registry.ARCHITECTURES` ×
    ``{base, ecg, bm, ecgbm}``.

    Args:
        arch: a registry architecture (``"hyperprior"``, ``"mean"``, ``"joint"``,
            ``"cheng2020-anchor"``, ...).
        variant: ``"base"``, ``"ecg"``, ``"bm"`` or ``"ecgbm"``.
        N, M: channel widths (defaults: the entry's, CompressAI's quality 1 config).
        lmbda: the trade-off factor of a fixed-rate model (metadata for the loss).
        lmbda_range: ``(min, max)`` λ of a variable-rate model.
        lmbda_ref: λ at which the modulator starts with unit gain.
        gate: keyword arguments of :class:`EnergyChannelGate`.
        bm_hidden: hidden width of the modulators.

    Images are ``B×3×H×W`` floats in [0, 1] with ``H`` and ``W`` multiples of
    :attr:`downsampling_factor`.
    """

    def __init__(
        self,
        arch: str,
        variant: str,
        N: int | None = None,
        M: int | None = None,
        lmbda: float = 0.0130,
        lmbda_range: tuple[float, float] = DEFAULT_LMBDA_RANGE,
        lmbda_ref: float | None = None,
        gate: dict | None = None,
        bm_hidden: int = 64,
    ) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
        entry = ARCHITECTURES[arch]
        n_default, m_default = entry.default_widths
        N, M = int(N or n_default), int(M or m_default)
        self.arch, self.variant = arch, variant
        self.gated, self.variable_rate = VARIANTS[variant]
        self.config = dict(
            arch=arch, variant=variant, N=N, M=M, lmbda=float(lmbda),
            lmbda_range=[float(v) for v in lmbda_range],
            lmbda_ref=lmbda_ref, gate=dict(gate or {}), bm_hidden=bm_hidden,
        )
        self.net = entry.build(N, M)
        use_inplace_gdn(self.net)
        self.lmbda = float(lmbda)
        self.gated_layers: list[str] = []
        if self.gated:
            self.gated_layers = insert_gates(self.net, skip=entry.ungated, **(gate or {}))
        self.lmbda_range: LmbdaRange | None = None
        self.autocast_dtype: torch.dtype | None = None
        self.compiled = False
        self.fp32_output_layers = False
        self._lmbda: Tensor | None = None
        self._y_hat: Tensor | None = None
        self.net.g_s.register_forward_pre_hook(self._capture_latent)
        if self.variable_rate:
            self.lmbda_range = LmbdaRange(*lmbda_range)
            self.modulator = BitrateModulator(M, self.lmbda_range, lmbda_ref, +0.5, bm_hidden)
            self.demodulator = BitrateModulator(M, self.lmbda_range, lmbda_ref, -0.5, bm_hidden)
            self.net.g_a.register_forward_hook(self._modulate)
            self.net.g_s.register_forward_pre_hook(self._demodulate)

    # ------------------------------------------------------------------ info
    @property
    def name(self) -> str:
        return f"{self.arch}-{self.variant}"

    @property
    def downsampling_factor(self) -> int:
        return int(self.net.downsampling_factor)

    def gates(self, prefix: str = "net.") -> list[tuple[str, EnergyChannelGate]]:
        """``(layer name, gate)`` pairs, in module order."""
        return [(n.removesuffix(".gate"), g) for n, g in gates_of(self, prefix)]

    def sparsity(self) -> dict[str, float]:
        """Fraction of input channels gated off per layer, from the last forward pass."""
        return {n: float(g.sparsity) for n, g in self.gates() if g.sparsity is not None}

    def extra_repr(self) -> str:
        return f"name={self.name!r}"

    # ------------------------------------------------------------- plumbing
    def _modulate(self, module: nn.Module, inputs, y: Tensor) -> Tensor:
        assert self._lmbda is not None, "variable-rate model called without lambda"
        return y * self.modulator(self._lmbda)[:, :, None, None].to(y.dtype)

    def _demodulate(self, module: nn.Module, inputs):
        assert self._lmbda is not None, "variable-rate model called without lambda"
        (y_hat,) = inputs
        return (y_hat * self.demodulator(self._lmbda)[:, :, None, None].to(y_hat.dtype),)

    def _capture_latent(self, module: nn.Module, inputs) -> None:
        if not self.training:
            self._y_hat = inputs[0].detach()

    @contextmanager
    def _at(self, lmbda: Tensor | None) -> Iterator[None]:
        self._lmbda = lmbda
        try:
            yield
        finally:
            self._lmbda = None

    def _lmbda_batch(self, lmbda, batch: int, device) -> Tensor:
        """λ as a ``(B,)`` tensor, checked against the trained range."""
        if lmbda is None:
            if self.variable_rate:
                raise ValueError(f"{self.name} is a variable-rate model: give lmbda")
            lmbda = self.lmbda
        t = torch.as_tensor(lmbda, dtype=torch.float32).flatten()
        if t.numel() == 1:
            t = t.expand(batch)
        if t.numel() != batch:
            raise ValueError(f"got {t.numel()} lambda values for a batch of {batch}")
        if self.lmbda_range is not None:
            # on the host when λ comes from there (the training loop): no device sync
            self.lmbda_range.check(float(t.min()))
            self.lmbda_range.check(float(t.max()))
        if t.device != torch.device(device):
            if t.device.type == "cpu" and torch.device(device).type == "cuda":
                t = t.pin_memory()
            t = t.to(device, non_blocking=True)
        return t

    def _check_image(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected a B×3×H×W image tensor, got shape {tuple(x.shape)}")
        f = self.downsampling_factor
        if x.shape[2] % f or x.shape[3] % f:
            raise ValueError(
                f"image height and width must be multiples of {f}, got "
                f"{x.shape[2]}×{x.shape[3]} (pad first: varicodec.codec does)"
            )

    # ------------------------------------------------------------- training
    def forward(self, x: Tensor, lmbda: float | Tensor | None = None) -> dict:
        """Training / evaluation pass. Returns ``x_hat``, ``likelihoods``, ``lmbda`` (B,)."""
        self._check_image(x)
        lm = self._lmbda_batch(lmbda, x.shape[0], x.device)
        with self._at(lm if self.variable_rate else None):
            out = self.net(x)
        out["lmbda"] = lm
        return out

    #: the transforms that :meth:`set_autocast` runs in reduced precision
    TRANSFORMS = ("g_a", "h_a", "h_s", "g_s")

    def set_autocast(self, dtype: torch.dtype | None, compile: bool = False,
                     fp32_output_layers: bool = False) -> None:
        """Training speed-ups on the transforms ``g_a``, ``h_a``, ``h_s``, ``g_s``.

        ``dtype`` (e.g. ``torch.bfloat16``) runs them under autocast, their outputs
        cast back to float32, so the bit-rate modulator, the quantiser, the entropy
        models and the likelihoods stay in float32 (so do the joint model's context
        and entropy-parameter networks). ``fp32_output_layers`` also keeps the last
        convolution of each transform in float32, so that neither the latent that is
        quantised nor the reconstruction in the loss is rounded to bf16's 8-bit
        mantissa. ``compile`` wraps each transform in ``torch.compile`` (fuses GDN's
        and the gates' element-wise work). ``set_autocast(None)`` restores the plain
        float32 modules.
        """
        self.autocast_dtype, self.compiled = dtype, bool(compile)
        self.fp32_output_layers = bool(fp32_output_layers)
        for name in self.TRANSFORMS:
            module = getattr(self.net, name)
            module.__dict__.pop("forward", None)       # back to the class's forward
            last = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
            if last:
                last[-1].__dict__.pop("forward", None)
                if dtype is not None and fp32_output_layers:
                    last[-1].forward = _Float32Forward(last[-1].forward)
            forward = module.forward
            if dtype is not None:
                forward = _AutocastForward(forward, dtype)
            if compile:
                forward = torch.compile(forward, dynamic=False)
            if forward is not module.forward:
                module.forward = forward

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Inside the block the transforms run plain float32, uncompiled; the
        :meth:`set_autocast` settings come back afterwards."""
        state = self.autocast_dtype, self.compiled, self.fp32_output_layers
        self.set_autocast(None)
        try:
            yield
        finally:
            self.set_autocast(state[0], compile=state[1], fp32_output_layers=state[2])

    def aux_loss(self) -> Tensor:
        return self.net.aux_loss()

    def update(self, force: bool = True) -> bool:
        """Build the entropy coder's tables (call after training, before coding)."""
        return self.net.update(force=force)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # CompressAI resizes its entropy-coder buffers to the stored ones, so the
        # network's keys go through its own loader; the plug-ins' keys load here.
        net_sd = {k[4:]: v for k, v in state_dict.items() if k.startswith("net.")}
        rest = {k: v for k, v in state_dict.items() if not k.startswith("net.")}
        r = self.net.load_state_dict(net_sd, strict=False)
        missing = [f"net.{k}" for k in r.missing_keys]
        unexpected = [f"net.{k}" for k in r.unexpected_keys]
        own = {n: t for n, t in [*self.named_parameters(), *self.named_buffers()]
               if not n.startswith("net.")}
        missing += sorted(set(own) - set(rest))
        unexpected += sorted(set(rest) - set(own))
        with torch.no_grad():
            for k, v in rest.items():
                if k in own:
                    own[k].copy_(v)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"state dict does not match {self.name}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
        return nn.modules.module._IncompatibleKeys(missing, unexpected)

    @contextmanager
    def cached_analysis(self, x: Tensor) -> Iterator[None]:
        """Run ``g_a`` on ``x`` once; inside the block every ``compress(x, λ)``
        reuses that latent (rate control codes one image at many λ this way).
        """
        self._check_image(x)
        with torch.no_grad():
            y = nn.Sequential.forward(self.net.g_a, x)  # the plain transform, no hooks
        original = self.net.g_a
        post = (lambda t: self._modulate(original, (), t)) if self.variable_rate else (lambda t: t)
        self.net.g_a = _CachedLatent(y, post)
        try:
            yield
        finally:
            self.net.g_a = original

    # ---------------------------------------------------------- real coding
    def _hs_gates(self) -> list[EnergyChannelGate]:
        return [g for _, g in gates_of(self.net.h_s)]

    def _coder(self, order: str):
        """What codes the latent: the :class:`~.wavefront.WavefrontCoder` for an
        autoregressive (joint) model in ``"wavefront"`` order, else the CompressAI
        model itself (``"sequential"``: its position-by-position loop for the joint
        model, the only order of the others)."""
        if order not in CODING_ORDERS:
            raise ValueError(f"unknown coding order {order!r}; choose from {CODING_ORDERS}")
        if order == "wavefront" and supports_wavefront(self.net):
            return WavefrontCoder(self.net)
        return self.net

    def _latents_per_item(self, shape) -> int:
        """Number of latents ``y`` of one image whose hyper-latent is ``shape`` (H×W)."""
        return int(self.config["M"]) * int(shape[0]) * 4 * int(shape[1]) * 4

    @torch.no_grad()
    def compress(self, x: Tensor, lmbda: float | None = None,
                 index_margin: float = INDEX_MARGIN, order: str = "wavefront") -> dict:
        """Entropy-code ``x``.

        Returns ``{"strings": [y, z] (+ [gates] if gated) + [guard], "shape": z's
        H×W, "lmbda": the λ used, "lmbda_code": its 16-bit code or None}``; each
        stream is a list with one byte string per batch element. The guard stream
        holds a CRC-32 of the coded symbols and the latents whose scale lies within
        a relative ``index_margin`` of a scale-table boundary (``0``: none; for
        tests), see :class:`_IndexGuard`. ``order``: the joint model's coding order,
        ``"wavefront"`` (:mod:`.wavefront`, format version 3) or ``"sequential"``
        (CompressAI's loop, versions 1-2); other models ignore it.
        """
        self._check_image(x)
        code = None
        if self.variable_rate:
            if lmbda is None:
                raise ValueError(f"{self.name} is a variable-rate model: give lmbda")
            assert self.lmbda_range is not None
            code = self.lmbda_range.encode(lmbda)
            lmbda_used = self.lmbda_range.decode(code)
            lm = self._lmbda_batch(lmbda_used, x.shape[0], x.device)
        else:
            if lmbda is not None and abs(float(lmbda) - self.lmbda) > 1e-12:
                raise ValueError(
                    f"{self.name} is a fixed-rate model trained at lambda {self.lmbda:g}; "
                    "it cannot code at another lambda"
                )
            lmbda_used, lm = self.lmbda, None
        for g in self._hs_gates():
            g.forced_mask = None
        gc = self.net.gaussian_conditional
        with self._at(lm), _IndexGuard(gc, margin=index_margin) as guard:
            out = self._coder(order).compress(x)
        strings = list(out["strings"])
        batch = x.shape[0]
        if self.gated:
            strings.append(self._pack_side(batch))
        positions = guard.item_positions(batch, self._latents_per_item(out["shape"]))
        strings.append([_pack_guard(c, p) for c, p in zip(guard.checks(batch), positions)])
        return {"strings": strings, "shape": tuple(out["shape"]), "lmbda": lmbda_used,
                "lmbda_code": code}

    def _pack_side(self, batch: int) -> list[bytes]:
        gates = self._hs_gates()
        if not any(g.unstable for g in gates):
            return [b""] * batch
        masks = torch.cat([g.mask for g in gates], dim=1).cpu().numpy()  # B×ΣC
        return [np.packbits(m).tobytes() for m in masks]

    def _unpack_side(self, side: list[bytes]) -> None:
        gates = self._hs_gates()
        total = sum(g.channels for g in gates)
        if all(len(s) == 0 for s in side):
            for g in gates:
                g.forced_mask = None
            return
        need = (total + 7) // 8
        if any(len(s) != need for s in side):
            raise ValueError(f"gate side stream has the wrong length (expected {need} bytes)")
        bits = np.stack([np.unpackbits(np.frombuffer(s, np.uint8))[:total] for s in side])
        masks = torch.from_numpy(bits.astype(bool))
        start = 0
        for g in gates:
            g.forced_mask = masks[:, start:start + g.channels]
            start += g.channels

    @torch.no_grad()
    def decompress(self, strings: list[list[bytes]], shape, lmbda_code: int | None = None,
                   order: str = "wavefront") -> dict:
        """Inverse of :meth:`compress`. Returns ``{"x_hat", "y_hat"}``.

        ``y_hat`` is the entropy-decoded latent (before the inverse modulator).
        Without the guard stream (files of format version 1) the indexes are all
        recomputed and nothing is checked; with it, a decode whose symbols do not
        match the encoder's raises :class:`~varicodec.errors.DesyncError`. ``order``:
        the joint model's coding order, as given to :meth:`compress`.
        """
        n_streams = 3 if self.gated else 2
        if len(strings) not in (n_streams, n_streams + 1):
            raise ValueError(f"{self.name} expects {n_streams} streams plus the guard "
                             f"stream, got {len(strings)}")
        batch = len(strings[0])
        per_item = self._latents_per_item(shape)
        guards = None
        forced = None
        if len(strings) > n_streams:
            if len(strings[n_streams]) != batch:
                raise ValueError("guard stream count does not match the batch")
            guards = [_unpack_guard(s, per_item) for s in strings[n_streams]]
            forced = torch.from_numpy(np.concatenate(
                [p + b * per_item for b, (_, p) in enumerate(guards)]))
        lm = None
        if self.variable_rate:
            if lmbda_code is None:
                raise ValueError(
                    f"{self.name} is a variable-rate model: the lambda code is missing")
            assert self.lmbda_range is not None
            lm = self._lmbda_batch(self.lmbda_range.decode(lmbda_code), batch, "cpu")
            lm = lm.to(next(self.parameters()).device)
        if self.gated:
            self._unpack_side(strings[2])
        gc = self.net.gaussian_conditional
        try:
            with self._at(lm), _IndexGuard(gc, forced=forced) as guard:
                out = self._coder(order).decompress(list(strings[:2]), shape)
        finally:
            for g in self._hs_gates():
                g.forced_mask = None
        if guards is not None:
            bad = [b for b, (got, (want, _)) in enumerate(zip(guard.checks(batch), guards))
                   if got != want]
            if bad:
                raise DesyncError(
                    "the decoded latent does not match the encoder's (symbol check failed"
                    + (f" for batch element {bad}" if batch > 1 else "") + "): this "
                    "machine's arithmetic went out of step with the encoder's, or the file "
                    "was altered; the picture would be garbage, so none is returned"
                )
        return {"x_hat": out["x_hat"], "y_hat": self._y_hat}


# ------------------------------------------------------------- index guard
_CHECK = struct.Struct(">I")


def _nearest_boundary(scales: Tensor, table: Tensor) -> tuple[Tensor, Tensor]:
    """For each raw scale (flattened): the nearest boundary ``k`` of ``table`` and the
    relative distance ``|s / t_k − 1|`` to it (float64, on the CPU).

    The boundaries are CompressAI's ``scale_table[:-1]``: ``build_indexes`` gives a
    scale just above ``t_k`` index ``k + 1``, one at or below it index ``k``.
    """
    s = scales.detach().reshape(-1).to("cpu", torch.float64)
    t = table.detach().to("cpu", torch.float64)
    j = torch.searchsorted(t, s).clamp_(1, len(t) - 1)
    k = torch.where((t[j] - s).abs() < (s - t[j - 1]).abs(), j, j - 1)
    return k, (s / t[k] - 1).abs()


def _scale_indexes(gc: nn.Module, scales: Tensor) -> Tensor:
    """``GaussianConditional.build_indexes``, the same integers in one search instead
    of CompressAI's 63 passes: the index of a scale is the number of boundaries
    ``scale_table[:-1]`` strictly below its lower-bounded value (NaN: the last index).
    ``tests/test_portability.py`` checks it against CompressAI's loop."""
    scales = gc.lower_bound_scale(scales)
    table = gc.scale_table[:-1].to(scales.device, scales.dtype)
    return torch.searchsorted(table, scales.reshape(-1).contiguous()).view(scales.shape).int()


class _IndexGuard:
    """Guards the scale indexes of one ``compress`` / ``decompress`` call and collects
    the entropy-coded symbols for the symbol check.

    Installed as instance attributes that shadow ``build_indexes``, ``quantize`` and
    ``dequantize`` of the model's ``GaussianConditional``, so CompressAI's own
    ``compress`` / ``decompress`` (and the joint model's position-by-position loops)
    run unchanged. Latents are numbered in coding order across the batch: element
    ``b``'s latent ``i`` is ``b · per_item + i`` (C×H×W order for the hyperprior and
    mean models, position then channel for the joint model, positions in sequential
    or wavefront order).

    * encoder (``margin``): a latent whose scale lies within ``margin`` of boundary
      ``t_k`` is coded with index ``k + 1``, whichever side it fell on, and its
      number goes to :attr:`positions`;
    * decoder (``forced``): at those numbers the index is ``k + 1`` for the boundary
      ``k`` nearest to the decoder's own scale (float noise is ~10⁴ times smaller
      than the 13 % gap between boundaries); elsewhere it is ``build_indexes``'s.
    """

    def __init__(self, gc: nn.Module, margin: float | None = None,
                 forced: Tensor | None = None) -> None:
        self.gc, self.margin, self.forced = gc, margin, forced
        self.count = 0
        self.positions: list[Tensor] = []
        self.symbols: list[Tensor] = []

    def build_indexes(self, scales: Tensor) -> Tensor:
        idx = _scale_indexes(self.gc, scales)
        start, n = self.count, scales.numel()
        self.count += n
        table = self.gc.scale_table[:-1]
        if self.margin is not None:
            k, dist = _nearest_boundary(scales, table)
            sel = (dist < self.margin).nonzero().squeeze(1)
            k = k[sel]
            if sel.numel():
                self.positions.append(sel + start)
        elif self.forced is not None:
            sel = self.forced[(self.forced >= start) & (self.forced < start + n)] - start
            if not sel.numel():
                return idx
            k, _ = _nearest_boundary(scales.reshape(-1)[sel.to(scales.device)], table)
        else:
            return idx
        flat = idx.view(-1)
        flat[sel.to(flat.device)] = (k + 1).to(flat.device, flat.dtype)
        return idx

    def quantize(self, inputs: Tensor, mode: str, means: Tensor | None = None) -> Tensor:
        out = type(self.gc).quantize(self.gc, inputs, mode, means)
        if mode == "symbols":
            self.symbols.append(out.detach().reshape(-1).to("cpu", torch.int32))
        return out

    def dequantize(self, inputs: Tensor, means: Tensor | None = None,
                   dtype: torch.dtype = torch.float) -> Tensor:
        self.symbols.append(inputs.detach().reshape(-1).to("cpu", torch.int32))
        return type(self.gc).dequantize(inputs, means, dtype)

    def __enter__(self) -> _IndexGuard:
        for name in ("build_indexes", "quantize", "dequantize"):
            setattr(self.gc, name, getattr(self, name))
        return self

    def __exit__(self, *exc) -> None:
        for name in ("build_indexes", "quantize", "dequantize"):
            self.gc.__dict__.pop(name, None)

    def checks(self, batch: int) -> list[int]:
        """CRC-32 of each batch element's symbols (int32, little-endian, coding order)."""
        symbols = torch.cat(self.symbols) if self.symbols else torch.zeros(0, dtype=torch.int32)
        if symbols.numel() % batch:
            raise ValueError("decoded symbol count does not match the batch")
        return [zlib.crc32(part.numpy().astype("<i4").tobytes())
                for part in symbols.view(batch, -1)]

    def item_positions(self, batch: int, per_item: int) -> list[np.ndarray]:
        """The recorded latent numbers, split per batch element (local numbers)."""
        pos = torch.cat(self.positions).numpy() if self.positions else np.zeros(0, np.int64)
        return [pos[(pos >= b * per_item) & (pos < (b + 1) * per_item)] - b * per_item
                for b in range(batch)]


def _pack_guard(check: int, positions: np.ndarray) -> bytes:
    """The guard stream: ``check`` (4 bytes), then if any latent is guarded, their
    count (varint), a Rice parameter ``r`` (1 byte) and the gaps between successive
    latent numbers (``pos − previous − 1``, previous = −1), Rice-coded: the quotient
    ``gap >> r`` in unary (ones ended by a zero), then the ``r`` low bits, MSB first.
    """
    out = bytearray(_CHECK.pack(check))
    if not len(positions):
        return bytes(out)
    gaps = np.diff(np.asarray(positions, np.int64), prepend=-1) - 1
    r = min(range(25), key=lambda r: int((gaps >> r).sum()) + len(gaps) * (r + 1))
    bits: list[int] = []
    for g in gaps.tolist():
        bits += [1] * (g >> r) + [0] + [(g >> i) & 1 for i in range(r - 1, -1, -1)]
    out += _varint(len(gaps)) + bytes([r]) + np.packbits(np.array(bits, np.uint8)).tobytes()
    return bytes(out)


def _unpack_guard(stream: bytes, per_item: int) -> tuple[int, np.ndarray]:
    """Inverse of :func:`_pack_guard`: ``(check, latent numbers)``; ``ValueError``
    for a malformed stream or a number outside ``[0, per_item)``."""
    if len(stream) < _CHECK.size:
        raise ValueError("guard stream shorter than its symbol check")
    (check,) = _CHECK.unpack_from(stream)
    if len(stream) == _CHECK.size:
        return check, np.zeros(0, np.int64)
    n, pos = 0, _CHECK.size
    for shift in range(0, 35, 7):
        if pos >= len(stream):
            raise ValueError("guard stream truncated")
        b = stream[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            break
    else:
        raise ValueError("guard stream: count too long")
    if not 0 < n <= per_item or pos >= len(stream) or stream[pos] > 24:
        raise ValueError("guard stream: bad count or Rice parameter")
    r = stream[pos]
    bits = np.unpackbits(np.frombuffer(stream, np.uint8, offset=pos + 1)).tolist()
    out, i, prev = np.empty(n, np.int64), 0, -1
    for j in range(n):
        q = 0
        while i < len(bits) and bits[i]:
            q, i = q + 1, i + 1
        if i + 1 + r > len(bits):
            raise ValueError("guard stream truncated")
        low = 0
        for b in bits[i + 1:i + 1 + r]:
            low = (low << 1) | b
        i += 1 + r
        prev = prev + 1 + ((q << r) | low)
        if prev >= per_item:
            raise ValueError("guard stream names a latent outside the image")
        out[j] = prev
    return check, out


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _AutocastForward:
    """A module's ``forward`` run under autocast, returning float32."""

    def __init__(self, forward, dtype: torch.dtype) -> None:
        self.forward, self.dtype = forward, dtype

    def __call__(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.forward(x)
        return out.float()


class _Float32Forward:
    """A layer's ``forward`` run in float32 inside an autocast region."""

    def __init__(self, forward) -> None:
        self.forward = forward

    def __call__(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.forward(x.float())


class _CachedLatent(nn.Module):
    """Stands in for ``g_a`` while :meth:`VaricodecModel.cached_analysis` is active."""

    def __init__(self, y: Tensor, post) -> None:
        super().__init__()
        self.y, self.post = y, post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.y)
