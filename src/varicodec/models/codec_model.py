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
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import DesyncError
from ..layers import (
    BitrateModulator,
    EnergyChannelGate,
    GatedConv2d,
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

#: Format version 5 on, mean-scale and joint models: the margin at boundary ``t`` is
#: ``max(INDEX_MARGIN, A / t)`` relative, i.e. at least ``A`` absolute, with
#: ``A = ABSOLUTE_MARGIN`` at ``λ ≥ ABSOLUTE_MARGIN_LMBDA`` and
#: ``ABSOLUTE_MARGIN · (λ / ABSOLUTE_MARGIN_LMBDA)^⅓`` below (:func:`absolute_margin`).
#: Their ``h_s`` (no final ReLU: it outputs means and scales, or the parameters the
#: joint model's entropy-parameter network reads) computes small scales as differences
#: of large terms, so the kernels' noise there is absolute, up to 5.2e-6 at quality 8
#: (1.2e-6 at 4, 7.4e-7 at 1: it grows about as λ^½), and relative, at most 4.5e-6,
#: at large scales (docs/results/portability.md).
ABSOLUTE_MARGIN = 1e-5
#: the λ (CompressAI's quality 8) from which the absolute margin is ``ABSOLUTE_MARGIN``
ABSOLUTE_MARGIN_LMBDA = 0.18
#: the architectures :data:`ABSOLUTE_MARGIN` applies to
ABSOLUTE_MARGIN_ARCHS = ("mean", "joint")


def absolute_margin(lmbda: float) -> float:
    """The absolute margin at λ (:data:`ABSOLUTE_MARGIN`), rounded to 12 decimals so
    that encoder and decoder agree on it exactly whatever their libm."""
    return round(ABSOLUTE_MARGIN * min(1.0, (float(lmbda) / ABSOLUTE_MARGIN_LMBDA) ** (1 / 3)),
                 12)


def _full_float32(method):
    """Run a coding method in true float32 on a CUDA model: TF32 (cuDNN's default for
    convolutions on Ampere and later) rounds products to 10 mantissa bits, ~10⁻³ relative,
    a hundred times the guard's margin (docs/results/portability.md), so an encoder and a
    decoder that used it on different devices would desynchronise. The global flags come
    back afterwards; on the CPU nothing changes."""
    import functools

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        param = next(self.parameters(), None)
        if param is None or param.device.type != "cuda":
            return method(self, *args, **kwargs)
        flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        try:
            return method(self, *args, **kwargs)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags

    return wrapper


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
        #: the encoder's ``g_a`` and the decoder's ``g_s`` layout on the CPU
        #: (:meth:`_analysis_layout`, :meth:`_synthesis_layout`); ``False`` runs them
        #: NCHW (for comparisons: benchmarks/layout.py)
        self.analysis_channels_last = True
        self.synthesis_channels_last = True
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

    def _boundary_widths(self, on: bool, lmbda: float) -> Tensor | None:
        """Per scale-table boundary, the factor by which the guard's relative margin
        and hash threshold widen there at ``lmbda`` (:func:`absolute_margin`): ``None``
        (all 1) for a hyperprior model or ``on`` false (format versions 1-4)."""
        if not on or self.arch not in ABSOLUTE_MARGIN_ARCHS:
            return None
        table = self.net.gaussian_conditional.scale_table[:-1].detach().to("cpu", torch.float64)
        return (absolute_margin(lmbda) / (INDEX_MARGIN * table)).clamp_(min=1.0)

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

    def compressai_network(self) -> nn.Module:
        """CompressAI's network of this architecture and width holding this model's
        weights, as CompressAI ships it (its own GDN, NCHW, no gates), in eval mode with
        its entropy tables built: the dense model a CompressAI user would run. A gated
        model gives its transforms without the gates. A variable-rate model has no such
        network until folded at one λ (:func:`varicodec.models.fold.fold_bitrate_modulator`).
        """
        if self.variable_rate:
            raise ValueError(f"{self.name} modulates its latent by λ, which CompressAI's "
                             f"network does not: fold it at one λ first "
                             f"(varicodec.models.fold.fold_bitrate_modulator)")
        net = ARCHITECTURES[self.arch].build(self.config["N"], self.config["M"]).eval()
        net.load_state_dict({k.removeprefix("net."): v for k, v in self.state_dict().items()
                             if k.startswith("net.") and ".gate." not in k})
        net.update(force=True)
        return net

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
        with torch.no_grad(), self._analysis_layout(x) as x:
            y = nn.Sequential.forward(self.net.g_a, x)  # the plain transform, no hooks
        original = self.net.g_a
        post = (lambda t: self._modulate(original, (), t)) if self.variable_rate else (lambda t: t)
        self.net.g_a = _CachedLatent(y, post)
        try:
            yield
        finally:
            self.net.g_a = original

    @contextmanager
    def _analysis_layout(self, x: Tensor) -> Iterator[Tensor]:
        """``x`` in the layout the encoder runs ``g_a`` in; inside the block ``g_a``'s
        convolutions run in that layout too.

        On the CPU ``g_a`` runs channels-last, input and weights: oneDNN's channels-last
        kernels are about 1.4× faster there than NCHW ones for a dense model
        (docs/results/layout.md), and a gated model's sparse convolutions gather their
        live channels from the channels-last activations and run in that layout too,
        for its GDNs' sake (oneDNN's 1×1 convolution): 1.26–1.30× faster encodes of the
        bundled gated default than its NCHW sparse path (docs/results/layout.md, "The
        gated encoder").
        Every encoder path (:meth:`compress` in both coding orders,
        :meth:`cached_analysis`) comes through here, so all of them compute the same
        ``y``, which leaves in the standard layout: CompressAI's sequential joint loop
        slices it position by position, ~2× slower on a channels-last tensor. Models on
        other devices keep their layouts.
        """
        g_a = self.net.g_a
        layers = [m for m in g_a.modules() if type(m) is nn.Conv2d or isinstance(m, GatedConv2d)]
        if not self.analysis_channels_last or x.device.type != "cpu" or not layers:
            yield x
            return
        gated = {m: m.sparse_channels_last for m in layers if isinstance(m, GatedConv2d)}
        for m in layers:
            if m in gated:
                m.sparse_channels_last = True
            else:
                m.forward = _ChannelsLastConv(m)
        hook = layers[-1].register_forward_hook(lambda m, args, out: out.contiguous())
        try:
            yield x.contiguous(memory_format=torch.channels_last)
        finally:
            hook.remove()
            for m in layers:
                if m in gated:
                    m.sparse_channels_last = gated[m]
                else:
                    del m.forward

    @contextmanager
    def _synthesis_layout(self) -> Iterator[None]:
        """Inside the block a dense ``g_s`` on the CPU takes its input channels-last
        (and returns the image in the standard layout): oneDNN's channels-last
        transposed convolutions are 1.4-1.9× faster, with the same output in every
        check (docs/results/layout.md). The wavefront decoder hands ``g_s``
        a channels-last latent anyway; gated transforms choose their layout per layer."""
        g_s = self.net.g_s
        param = next(g_s.parameters(), None)
        if (not self.synthesis_channels_last or param is None or param.device.type != "cpu"
                or gates_of(g_s)):
            yield
            return
        handles = [
            g_s.register_forward_pre_hook(
                lambda m, args: (args[0].contiguous(memory_format=torch.channels_last),
                                 *args[1:])),
            g_s.register_forward_hook(lambda m, args, out: out.contiguous()),
        ]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

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
    @_full_float32
    def compress(self, x: Tensor, lmbda: float | None = None,
                 index_margin: float = INDEX_MARGIN, order: str = "wavefront",
                 guard_mode: str = "auto", absolute_margin: bool = True) -> dict:
        """Entropy-code ``x``.

        Returns ``{"strings": [y, z] (+ [gates] if gated) + [guard], "shape": z's
        H×W, "lmbda": the λ used, "lmbda_code": its 16-bit code or None}``; each
        stream is a list with one byte string per batch element. The guard stream
        holds a CRC-32 of the coded symbols and the latents whose scale lies within
        a relative ``index_margin`` of a scale-table boundary (``0``: none; for
        tests), see :class:`_IndexGuard`. ``order``: the joint model's coding order,
        ``"wavefront"`` (:mod:`.wavefront`, format version 3) or ``"sequential"``
        (CompressAI's loop, versions 1-2); other models ignore it. ``guard_mode``:
        how the guard stream names the guarded latents, ``"auto"`` (the shorter of
        positions and hash mode, format version 4), ``"positions"`` (the layout of
        versions 2-3) or ``"hash"`` (hash mode wherever the coder shows the guard a
        whole batch element at once; for tests). CompressAI's sequential joint loop
        decides index by index, so it always gets positions mode.
        ``absolute_margin``: widen a mean or joint model's margin to at least
        :func:`absolute_margin` absolute at small scales (format version 5 on;
        ``False`` guards as versions 2-4 did).
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
        f = self.downsampling_factor
        per_item = self._latents_per_item((x.shape[2] // f, x.shape[3] // f))
        widths = self._boundary_widths(absolute_margin, lmbda_used)
        with self._at(lm), _IndexGuard(gc, margin=index_margin, per_item=per_item,
                                       mode=guard_mode, widths=widths) as guard, \
                self._analysis_layout(x) as x:
            out = self._coder(order).compress(x)
        strings = list(out["strings"])
        batch = x.shape[0]
        if self.gated:
            strings.append(self._pack_side(batch))
        if self._latents_per_item(out["shape"]) != per_item:
            raise ValueError("unexpected hyper-latent shape")
        positions = guard.item_positions(batch, per_item)
        strings.append([_pack_guard(c, p, guard.hashed.get(b)) for b, (c, p)
                        in enumerate(zip(guard.checks(batch), positions))])
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
    @_full_float32
    def decompress(self, strings: list[list[bytes]], shape, lmbda_code: int | None = None,
                   order: str = "wavefront", absolute_margin: bool = True) -> dict:
        """Inverse of :meth:`compress`. Returns ``{"x_hat", "y_hat"}``.

        ``y_hat`` is the entropy-decoded latent (before the inverse modulator).
        Without the guard stream (files of format version 1) the indexes are all
        recomputed and nothing is checked; with it, a decode whose symbols do not
        match the encoder's raises :class:`~varicodec.errors.DesyncError`. ``order``:
        the joint model's coding order, and ``absolute_margin``, as given to
        :meth:`compress`.
        """
        n_streams = 3 if self.gated else 2
        if len(strings) not in (n_streams, n_streams + 1):
            raise ValueError(f"{self.name} expects {n_streams} streams plus the guard "
                             f"stream, got {len(strings)}")
        batch = len(strings[0])
        per_item = self._latents_per_item(shape)
        guards = None
        forced = None
        hashed: dict[int, _HashSet] = {}
        if len(strings) > n_streams:
            if len(strings[n_streams]) != batch:
                raise ValueError("guard stream count does not match the batch")
            guards = [_unpack_guard(s, per_item) for s in strings[n_streams]]
            hashed = {b: h for b, (_, h) in enumerate(guards) if isinstance(h, _HashSet)}
            forced = torch.from_numpy(np.concatenate(
                [np.zeros(0, np.int64)] + [p + b * per_item for b, (_, p) in enumerate(guards)
                                           if not isinstance(p, _HashSet)]))
        lm, lmbda = None, self.lmbda
        if self.variable_rate:
            if lmbda_code is None:
                raise ValueError(
                    f"{self.name} is a variable-rate model: the lambda code is missing")
            assert self.lmbda_range is not None
            lmbda = self.lmbda_range.decode(lmbda_code)
            lm = self._lmbda_batch(lmbda, batch, "cpu")
            lm = lm.to(next(self.parameters()).device)
        if self.gated:
            self._unpack_side(strings[2])
        gc = self.net.gaussian_conditional
        try:
            widths = self._boundary_widths(absolute_margin, lmbda)
            with self._at(lm), _IndexGuard(gc, forced=forced, per_item=per_item,
                                           hashed=hashed, widths=widths) as guard, \
                    self._synthesis_layout():
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

#: Hash mode (format version 4): the decoder's "near a boundary" threshold. A latent
#: whose hash is in the sent set is forced iff its own relative distance to the
#: nearest boundary is below this; it must exceed ``INDEX_MARGIN`` plus the largest
#: float noise (the encoder keeps every hashed latent ``INDEX_MARGIN`` away from it).
HASH_THRESHOLD = 2e-5
#: seeds the encoder may try per hash width (the mode byte holds 4 bits of seed)
HASH_SEEDS = 16
#: widest hash, in bits (hashes are 32-bit; the top ``bits`` are kept)
HASH_MAX_BITS = 31
#: mode byte of a hash-mode stream: ``HASH_MODE_BASE + 16 · Δ + seed``, where
#: ``bits = bit_length(count) + Δ``, ``Δ`` 0 … 13; a positions-mode stream has its
#: Rice parameter (0 … 24) in that byte
HASH_MODE_BASE = 32
_MASK32 = np.uint64(0xFFFFFFFF)
#: guard modes of :meth:`VaricodecModel.compress`
GUARD_MODES = ("auto", "positions", "hash")


class _HashSet(NamedTuple):
    """A hash-mode guard of one batch element: the ``bits``-bit hashes under ``seed``
    of the latents the decoder forces (sorted, distinct)."""

    bits: int
    seed: int
    values: np.ndarray


def _guard_hash(numbers: np.ndarray | Tensor, seed: int) -> np.ndarray:
    """The 32-bit hash of latent numbers (local to the batch element) under ``seed``:
    murmur3's finaliser of ``number XOR (seed · 0x9E3779B9 mod 2³²)``, in uint32
    arithmetic (numpy uint64 and a mask). Hash mode keeps its top ``bits`` bits
    (``h >> (32 − bits)``). Pinned by ``tests/test_portability.py``; docs/FORMAT.md."""
    h = np.asarray(numbers).astype(np.uint64) & _MASK32
    h ^= np.uint64((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    h = (h * np.uint64(0x85EBCA6B)) & _MASK32
    h ^= h >> np.uint64(13)
    h = (h * np.uint64(0xC2B2AE35)) & _MASK32
    h ^= h >> np.uint64(16)
    return h


def _guard_hash_int(number: int, seed: int) -> int:
    """:func:`_guard_hash` of one number, in Python integers: for the few latents of one
    wavefront, a dozen integer operations instead of a dozen numpy calls (each of which,
    between the joint decoder's convolutions, costs several microseconds)."""
    h = (number & 0xFFFFFFFF) ^ ((seed * 0x9E3779B9) & 0xFFFFFFFF)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


#: up to this many latents, :func:`_hash_rule` hashes in Python integers
_HASH_RULE_INT = 16


def _top_bits(h: np.ndarray, bits: int) -> np.ndarray:
    return h >> np.uint64(32 - bits)


def _choose_hash(numbers: np.ndarray, dist: np.ndarray,
                 margin: float) -> tuple[_HashSet, np.ndarray] | None:
    """The encoder's hash-mode selection for one batch element.

    ``numbers`` / ``dist``: the latents with ``dist < HASH_THRESHOLD + margin`` (no
    other latent can matter) and their relative distance to the nearest boundary.
    G = {dist < margin} must be forced. For ``bits`` = bit_length(|G|) … 31 and
    ``seed`` = 0 … 15: H = the hashes of G; the *danger* latents are those with a
    hash in H and ``|dist − HASH_THRESHOLD| < margin`` (their "below the threshold"
    test could come out otherwise on the decoder). The first (bits, seed) without
    danger is taken. Returns it with the mask (over ``numbers``) of the latents the
    encoder forces, {hash ∈ H and dist < HASH_THRESHOLD} ⊇ G; ``None`` if G is
    empty or no choice is safe (the caller then writes positions).

    Why the decoder forces exactly the same latents and computes the same indexes,
    given scales within a relative ``margin`` of the encoder's:

    * a latent whose ``build_indexes`` could flip lies within ``margin`` of a
      boundary, so it is in G: its hash is in H and its distance is below the
      threshold on both sides, so both force it, to ``k + 1`` of the same boundary;
    * a latent with a hash in H whose distance lies within ``margin`` of the
      threshold does not exist (the seed search excludes it), so every latent with
      a hash in H is below the threshold on both sides or above it on both;
    * every other latent is decided by ``build_indexes`` identically on both sides.
    """
    g = dist < margin
    n_g = int(g.sum())
    if not n_g:
        return None
    danger = np.abs(dist - HASH_THRESHOLD) < margin
    if (g & danger).any():
        return None  # a margin this wide leaves no safe threshold
    full = [_guard_hash(numbers, seed) for seed in range(HASH_SEEDS)]
    for bits in range(n_g.bit_length(), HASH_MAX_BITS + 1):
        for seed, h in enumerate(full):
            top = _top_bits(h, bits)
            values = np.unique(top[g])
            if bits - len(values).bit_length() > 13:
                continue  # Δ does not fit the mode byte
            if np.isin(top[danger], values).any():
                continue
            return _HashSet(bits, seed, values), np.isin(top, values) & (dist < HASH_THRESHOLD)
    return None


def _hash_rule(numbers: np.ndarray, dist: np.ndarray, hashed: _HashSet) -> np.ndarray:
    """The decoder's hash-mode rule: which of the latents ``numbers`` (local to the
    batch element) at relative distance ``dist`` from their nearest boundary it forces
    (``dist < HASH_THRESHOLD`` and the hash in the sent set)."""
    below = dist < HASH_THRESHOLD
    if not below.any():
        return below
    if len(numbers) <= _HASH_RULE_INT:  # one wavefront's few: no numpy per step
        shift, seed = 32 - hashed.bits, hashed.seed
        values = set(hashed.values.tolist())
        return np.array([b and (_guard_hash_int(n, seed) >> shift) in values
                         for n, b in zip(numbers.tolist(), below.tolist())], dtype=bool)
    top = _top_bits(_guard_hash(numbers, hashed.seed), hashed.bits)
    # hashed.values is sorted and distinct (the stream's gaps): a binary search is
    # several times faster than np.isin on the few latents of one wavefront
    at = np.searchsorted(hashed.values, top).clip(max=len(hashed.values) - 1)
    return below & (hashed.values[at] == top)


def _near_boundaries(gc: nn.Module, scales: Tensor, idx: Tensor, within: float,
                     widths: Tensor | None = None,
                     cache: dict | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The latents of one ``build_indexes`` call whose raw scale lies within a relative
    ``within`` of a scale-table boundary (``within · widths[k]`` at boundary ``k``):
    (positions in the call, ascending, on the CPU; nearest boundary ``k``; distance
    in those units), exactly as :func:`_nearest_boundary`.

    :func:`_nearest_boundary` (float64) over every latent costs ~12 ms per Kodak
    image, 5 % of a decode; so a float32 pass (< 1 ms) first keeps the latents whose
    scale ``s`` lies within about ``2 · within`` of the boundaries on either side of
    the index ``i`` that ``build_indexes`` gave, ``t_{i−1} < s ≤ t_i``:
    ``s ≥ t_i (1 − 2·within)`` or ``s ≤ t_{i−1} (1 + 2·within)`` (one-sided tests, so
    an index off by one near a boundary still keeps the latent), and only those get
    the exact float64 distance. This needs the scale bound at or below the first
    boundary (as in CompressAI: a scale below it has index 0); otherwise every latent
    goes to the exact pass. ``cache``: a dict the caller keeps for calls with the
    same ``gc``, ``within`` and ``widths`` (the joint decoder makes one call per
    wavefront), which then holds the windows and tables.
    """
    flat = scales.reshape(-1)
    if flat.device.type == "cpu":  # numpy throughout: µs per call on one wavefront
        pos, k, dist = _near_boundaries_np(gc, flat, idx, within, widths, cache)
        return torch.from_numpy(pos), torch.from_numpy(k), torch.from_numpy(dist)
    windows = _cached(cache, ("torch", within, flat.device),
                      _windows, gc, within, widths, flat.device)
    if within <= 0:
        pre = torch.zeros(0, dtype=torch.int64, device=flat.device)
    elif windows:
        above, below = windows
        s, i = flat.float(), idx.reshape(-1).to(flat.device)  # int32, _scale_indexes
        pre = ((s >= above.index_select(0, i)) | (s <= below.index_select(0, i)))
        pre = pre.nonzero().squeeze(1)
    else:
        pre = torch.arange(flat.numel(), device=flat.device)
    if not pre.numel():
        empty = torch.zeros(0, dtype=torch.int64)
        return empty, empty, torch.zeros(0, dtype=torch.float64)
    k, dist = _nearest_boundary(flat[pre], gc.scale_table[:-1], widths)
    keep = dist < within
    return pre.cpu()[keep], k[keep], dist[keep]


def _cached(cache: dict | None, key, make, *args):
    """``cache[key]``, made by ``make(*args)`` on first use (no cache: made every time).
    Arguments rather than a closure, so a caller on the joint decoder's per-wavefront
    path makes no function object per call."""
    if cache is None:
        return make(*args)
    value = cache.get(key)
    if value is None:
        value = cache[key] = make(*args)
    return value


_EMPTY_I64 = np.zeros(0, dtype=np.int64)
_EMPTY_F64 = np.zeros(0, dtype=np.float64)


def _near_boundaries_np(gc: nn.Module, flat: Tensor, idx: Tensor, within: float,
                        widths: Tensor | None, cache: dict | None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_near_boundaries` on the CPU, as numpy arrays: the same float32
    pre-selection and float64 distances, with the windows, the table and the widths
    converted once per ``cache``. The joint decoder calls this once per wavefront,
    right after the context model and the entropy parameters, where every call runs
    with cold caches (docs/results/portability.md): so as few calls as it can make."""
    if within <= 0:
        return _EMPTY_I64, _EMPTY_I64, _EMPTY_F64
    windows, table, w64 = _cached(cache, ("numpy", within), _numpy_tables,
                                  gc, within, widths)
    sv = _scales_numpy(flat)
    if windows:
        above, below = windows
        iv = idx.reshape(-1).numpy()
        s32 = sv if sv.dtype == np.float32 else sv.astype(np.float32)
        near = s32 >= above[iv]
        near |= s32 <= below[iv]
        pre = near.nonzero()[0]
        if not pre.size:  # the usual case for one wavefront of the joint model
            return _EMPTY_I64, _EMPTY_I64, _EMPTY_F64
    else:
        pre = np.arange(sv.size)
    k, dist = _nearest_boundary_np(sv[pre], table, w64)
    keep = dist < within
    return pre[keep], k[keep], dist[keep]


def _numpy_tables(gc: nn.Module, within: float, widths: Tensor | None
                  ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray | None]:
    """:func:`_near_boundaries_np`'s tables: the float32 windows, the float64 boundaries
    and widths."""
    w = _windows(gc, within, widths, "cpu")
    return (tuple(x.numpy() for x in w), *_float64_tables(gc, widths))


def _float64_tables(gc: nn.Module, widths: Tensor | None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """The boundaries ``scale_table[:-1]`` and the widths as float64 numpy arrays."""
    return (gc.scale_table[:-1].detach().to("cpu", torch.float64).numpy(),
            None if widths is None else widths.detach().to("cpu", torch.float64).numpy())


def _scales_numpy(flat: Tensor) -> np.ndarray:
    """Raw scales as a CPU numpy array, float32 or float64 as they are (others: float32)."""
    flat = flat.detach()
    if flat.dtype == torch.float32 and flat.device.type == "cpu":
        return flat.numpy()  # the decoder's per-wavefront case: no further calls
    return (flat if flat.dtype in (torch.float32, torch.float64) else flat.float()).cpu().numpy()


def _windows(gc: nn.Module, within: float, widths: Tensor | None,
             device) -> tuple[Tensor, Tensor] | tuple[()]:
    """:func:`_near_boundaries`' float32 pre-selection windows per index ``i``: a scale
    at or above ``above[i]`` or at or below ``below[i]`` goes to the exact pass; ``()``
    where the pre-selection does not apply (scale bound above the first boundary, or
    a window of 10⁻³ or more)."""
    table = gc.scale_table[:-1]
    bound = getattr(getattr(gc, "lower_bound_scale", None), "bound", None)
    wide = within * (1 if widths is None else float(widths.max()))
    if within <= 0 or bound is None or float(bound) > float(table[0]) or wide >= 1e-3:
        return ()
    t = table.to(device, torch.float32)
    w = within if widths is None else within * widths.to(device, torch.float32)
    inf = torch.full((1,), float("inf"), device=device)
    return (torch.cat([t * (1 - 2 * w), inf]),  # index i: near t_i from below
            torch.cat([-inf, t * (1 + 2 * w)]))  # index i: near t_{i−1} from above


def _nearest_boundary(scales: Tensor, table: Tensor,
                      widths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """For each raw scale (flattened): the nearest boundary ``k`` of ``table`` and the
    relative distance ``|s / t_k − 1|`` to it (float64, on the CPU), divided by
    ``widths[k]`` if given: in those units every boundary's margin and hash
    threshold are the same numbers (:data:`ABSOLUTE_MARGIN`).

    The boundaries are CompressAI's ``scale_table[:-1]``: ``build_indexes`` gives a
    scale just above ``t_k`` index ``k + 1``, one at or below it index ``k``.
    """
    s = scales.detach().reshape(-1).to("cpu", torch.float64).numpy()
    t = table.detach().to("cpu", torch.float64).numpy()
    w = None if widths is None else widths.detach().to("cpu", torch.float64).numpy()
    k, dist = _nearest_boundary_np(s, t, w)
    return torch.from_numpy(k), torch.from_numpy(dist)


def _nearest_boundary_np(s: np.ndarray, t: np.ndarray,
                         w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_nearest_boundary` on numpy arrays (``t``, ``w`` float64; ``s`` any
    float, converted): numpy costs a fraction of torch's per-call overhead on the few
    latents of one wavefront (the joint decoder calls this once per wavefront)."""
    s = s.astype(np.float64, copy=False)
    j = np.searchsorted(t, s).clip(1, len(t) - 1)
    k = np.where(np.abs(t[j] - s) < np.abs(s - t[j - 1]), j, j - 1)
    dist = np.abs(s / t[k] - 1)
    if w is not None:
        dist = dist / w[k]
    return k.astype(np.int64, copy=False), dist


def _scale_indexes(gc: nn.Module, scales: Tensor) -> Tensor:
    """``GaussianConditional.build_indexes``, the same integers in one search instead
    of CompressAI's 63 passes: the index of a scale is the number of boundaries
    ``scale_table[:-1]`` strictly below its lower-bounded value (NaN: the last index).
    ``tests/test_portability.py`` checks it against CompressAI's loop."""
    bound = getattr(gc.lower_bound_scale, "bound", None)
    if bound is not None and not scales.requires_grad:
        # LowerBound's forward is torch.max(x, bound); called directly, without its
        # autograd Function, it costs a fraction on the few latents of one wavefront
        scales = torch.maximum(scales, bound.to(scales.device))
    else:
        scales = gc.lower_bound_scale(scales)
    table = gc.scale_table[:-1].to(scales.device, scales.dtype)
    return torch.searchsorted(table, scales.reshape(-1).contiguous(),
                              out_int32=True).view(scales.shape)


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
      ``t_k`` is coded with index ``k + 1``, whichever side it fell on. How the
      decoder learns which: *positions mode* lists their numbers
      (:attr:`positions`); *hash mode* (``mode`` ``"hash"`` or ``"auto"``, only for
      a ``build_indexes`` call that covers whole batch elements, so that all their
      scales are known before any index is decided) sends a short hash of each and
      forces a few more latents, see :func:`_choose_hash` (:attr:`hashed`, per
      element). ``"auto"`` writes whichever stream is shorter.
    * decoder (``forced`` numbers, ``hashed`` per element): at the forced numbers,
      and at the latents the hash rule selects (:func:`_hash_rule`), the index is
      ``k + 1`` for the boundary ``k`` nearest to the decoder's own scale (float
      noise is ~10⁴ times smaller than the 13 % gap between boundaries); elsewhere
      it is ``build_indexes``'s.
    """

    def __init__(self, gc: nn.Module, margin: float | None = None,
                 forced: Tensor | None = None, *, per_item: int | None = None,
                 mode: str = "positions", hashed: dict[int, _HashSet] | None = None,
                 widths: Tensor | None = None) -> None:
        if mode not in GUARD_MODES:
            raise ValueError(f"unknown guard mode {mode!r}; choose from {GUARD_MODES}")
        self.gc, self.margin, self.forced, self.widths = gc, margin, forced, widths
        self._windows: dict = {}  # _near_boundaries' float32 windows, per margin
        self.per_item, self.mode = per_item, mode
        self.hashed: dict[int, _HashSet] = dict(hashed or {})
        self.count = 0
        self.positions: list[Tensor] = []
        self.symbols: list[Tensor] = []

    def build_indexes(self, scales: Tensor) -> Tensor:
        idx = _scale_indexes(self.gc, scales)
        start, n = self.count, scales.numel()
        self.count += n
        flat = idx.view(-1)
        if self.margin is not None:
            sel, k = self._encode_call(scales, idx, start, n)
            if sel.numel():
                flat[sel.to(flat.device)] = (k + 1).to(flat.device, flat.dtype)
        else:
            sel_np, k_np = self._decode_call(scales, idx, start, n)
            if sel_np.size:
                flat[torch.from_numpy(sel_np).to(flat.device)] = \
                    torch.from_numpy(k_np + 1).to(flat.device, flat.dtype)
        return idx

    def _encode_call(self, scales: Tensor, idx: Tensor, start: int,
                     n: int) -> tuple[Tensor, Tensor]:
        """Encoder: (positions in this call, boundaries) of the latents to force."""
        assert self.margin is not None
        per = self.per_item
        whole = (self.mode != "positions" and per is not None and per > 0
                 and start % per == 0 and n % per == 0)
        within = HASH_THRESHOLD + self.margin if whole else self.margin
        pos, k, dist = _near_boundaries(self.gc, scales, idx, within, self.widths,
                                        self._windows)
        if not whole:
            if pos.numel():
                self.positions.append(pos + start)
            return pos, k
        assert per is not None
        sels: list[Tensor] = []
        ks: list[Tensor] = []
        for j in range(n // per):
            lo = j * per
            part = ((pos >= lo) & (pos < lo + per)).nonzero().squeeze(1)
            numbers, d = (pos[part] - lo).numpy(), dist[part].numpy()
            g = d < self.margin
            pick = _choose_hash(numbers, d, self.margin) if g.any() else None
            if pick is not None:
                hashed, mask = pick
                if self.mode == "hash" or (len(_hash_tail(hashed))
                                           < len(_positions_tail(numbers[g]))):
                    self.hashed[(start + lo) // per] = hashed
                    chosen = part[torch.from_numpy(mask)]
                    sels.append(pos[chosen])
                    ks.append(k[chosen])
                    continue
            if g.any():
                chosen = part[torch.from_numpy(g)]
                self.positions.append(pos[chosen] + start)
                sels.append(pos[chosen])
                ks.append(k[chosen])
        return _joined(sels, ks)

    def _decode_call(self, scales: Tensor, idx: Tensor, start: int,
                     n: int) -> tuple[np.ndarray, np.ndarray]:
        """Decoder: (positions in this call, boundaries) of the latents to force, as
        numpy arrays (numpy throughout: the joint decoder calls this per wavefront)."""
        sels: list[np.ndarray] = []
        ks: list[np.ndarray] = []
        if self.forced is not None and self.forced.numel():
            forced = self.forced.numpy()
            sel = forced[(forced >= start) & (forced < start + n)] - start
            if sel.size:
                table, w64 = _cached(self._windows, "tables",
                                     _float64_tables, self.gc, self.widths)
                sels.append(sel)
                ks.append(_nearest_boundary_np(_scales_numpy(scales.reshape(-1))[sel],
                                               table, w64)[0])
        per = self.per_item
        if self.hashed and per:
            items = [b for b in range(start // per, (start + n - 1) // per + 1)
                     if b in self.hashed]
            if items:
                if scales.device.type == "cpu":  # numpy end to end
                    pos, k, dist = _near_boundaries_np(self.gc, scales.reshape(-1), idx,
                                                       HASH_THRESHOLD, self.widths,
                                                       self._windows)
                else:
                    pos, k, dist = (t.numpy() for t in _near_boundaries(
                        self.gc, scales, idx, HASH_THRESHOLD, self.widths, self._windows))
                number = pos + start  # across the batch; ascending
                for b in items if pos.size else []:
                    lo, hi = np.searchsorted(number, [b * per, (b + 1) * per])
                    mask = _hash_rule(number[lo:hi] - b * per, dist[lo:hi], self.hashed[b])
                    sels.append(pos[lo:hi][mask])
                    ks.append(k[lo:hi][mask])
        if not sels:
            return _EMPTY_I64, _EMPTY_I64
        return np.concatenate(sels), np.concatenate(ks)

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


def _joined(sels: list[Tensor], ks: list[Tensor]) -> tuple[Tensor, Tensor]:
    """The forced positions and their boundaries gathered by an encode or decode call
    (two empty int64 tensors when there are none)."""
    if not sels:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(sels), torch.cat(ks)


def _rice_bits(gaps: np.ndarray) -> tuple[int, bytes]:
    """The Rice parameter ``r`` (0 … 24) that codes ``gaps`` shortest, and the gaps
    coded with it: the quotient ``gap >> r`` in unary (ones ended by a zero), then
    the ``r`` low bits, MSB first; bit-packed, zero-padded."""
    r = min(range(25), key=lambda r: int((gaps >> r).sum()) + len(gaps) * (r + 1))
    bits: list[int] = []
    for g in gaps.tolist():
        bits += [1] * (g >> r) + [0] + [(g >> i) & 1 for i in range(r - 1, -1, -1)]
    return r, np.packbits(np.array(bits, np.uint8)).tobytes()


def _gaps(values: np.ndarray) -> np.ndarray:
    return np.diff(np.asarray(values, np.int64), prepend=-1) - 1


def _positions_tail(positions: np.ndarray) -> bytes:
    """Positions mode, after the check: count (varint), Rice parameter, gaps."""
    r, data = _rice_bits(_gaps(positions))
    return _varint(len(positions)) + bytes([r]) + data


def _hash_tail(hashed: _HashSet) -> bytes:
    """Hash mode (format version 4), after the check: count (varint), mode byte
    ``HASH_MODE_BASE + 16 · Δ + seed`` (``bits = bit_length(count) + Δ``), Rice
    parameter, gaps of the sorted distinct hash values."""
    n = len(hashed.values)
    delta = hashed.bits - n.bit_length()
    if not (n and 0 <= delta <= 13 and 0 <= hashed.seed < HASH_SEEDS
            and hashed.bits <= HASH_MAX_BITS):
        raise ValueError("hash-mode guard out of range")
    r, data = _rice_bits(_gaps(hashed.values))
    return _varint(n) + bytes([HASH_MODE_BASE + 16 * delta + hashed.seed, r]) + data


def _pack_guard(check: int, positions: np.ndarray, hashed: _HashSet | None = None) -> bytes:
    """The guard stream: ``check`` (4 bytes), then, if any latent is guarded, either
    their numbers (positions mode: count varint, Rice parameter ``r`` ≤ 24, the gaps
    ``pos − previous − 1`` with previous = −1, Rice-coded) or, given ``hashed``,
    the hash-mode tail (:func:`_hash_tail`; its mode byte is ≥ ``HASH_MODE_BASE``,
    which tells the two apart)."""
    out = _CHECK.pack(check)
    if hashed is not None:
        return out + _hash_tail(hashed)
    if not len(positions):
        return out
    return out + _positions_tail(positions)


def guard_is_hash_mode(stream: bytes) -> bool:
    """Whether a guard stream is in hash mode (the byte after its count is
    ≥ ``HASH_MODE_BASE``; :func:`_pack_guard`). Only format version 4 writes it; a
    malformed stream answers ``False`` and fails in :func:`_unpack_guard`."""
    pos = _CHECK.size
    while pos < len(stream) and stream[pos] & 0x80:   # the count's varint
        pos += 1
    return pos + 1 < len(stream) and stream[pos + 1] >= HASH_MODE_BASE


def _unpack_guard(stream: bytes, per_item: int) -> tuple[int, np.ndarray | _HashSet]:
    """Inverse of :func:`_pack_guard`: ``(check, latent numbers)`` for a positions-mode
    stream, ``(check, _HashSet)`` for a hash-mode one; ``ValueError`` for a malformed
    stream or a number outside ``[0, per_item)``."""
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
    if n == 0 or pos >= len(stream):
        raise ValueError("guard stream: bad count or Rice parameter")
    mode = stream[pos]
    if mode <= 24:  # positions mode: the byte is the Rice parameter
        if n > per_item:
            raise ValueError("guard stream: bad count or Rice parameter")
        return check, _rice_values(stream, pos + 1, n, mode, per_item,
                                   "guard stream names a latent outside the image")
    if mode < HASH_MODE_BASE:
        raise ValueError("guard stream: bad count or Rice parameter")
    delta, seed = divmod(mode - HASH_MODE_BASE, 16)
    bits = n.bit_length() + delta
    if bits > HASH_MAX_BITS:
        raise ValueError("guard stream: hash wider than 31 bits")
    if pos + 1 >= len(stream) or stream[pos + 1] > 24:
        raise ValueError("guard stream: bad Rice parameter")
    values = _rice_values(stream, pos + 2, n, stream[pos + 1], 1 << bits,
                          "guard stream: hash value out of range")
    return check, _HashSet(bits, seed, values.astype(np.uint64))


def _rice_values(stream: bytes, start: int, n: int, r: int, limit: int,
                 outside: str) -> np.ndarray:
    """``n`` strictly increasing numbers below ``limit`` from Rice-coded gaps."""
    if n * (1 + r) > 8 * (len(stream) - start):
        raise ValueError("guard stream truncated")
    bits = np.unpackbits(np.frombuffer(stream, np.uint8, offset=start)).tolist()
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
        if prev >= limit:
            raise ValueError(outside)
        out[j] = prev
    return out


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


class _ChannelsLastConv:
    """The forward of a plain ``nn.Conv2d`` on a channels-last copy of its weight
    (taken once, when made): :meth:`VaricodecModel._analysis_layout`."""

    def __init__(self, conv: nn.Conv2d) -> None:
        self.conv = conv
        self.weight = conv.weight.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: Tensor) -> Tensor:
        return self.conv._conv_forward(x, self.weight, self.conv.bias)


class _CachedLatent(nn.Module):
    """Stands in for a transform and returns ``post(y)``, whatever its input: ``g_a``
    while :meth:`VaricodecModel.cached_analysis` is active, and ``g_a`` / ``h_a`` under
    :func:`~varicodec.models.refine.fixed_latents`."""

    def __init__(self, y: Tensor, post) -> None:
        super().__init__()
        self.y, self.post = y, post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.y)
