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
* The decoder recomputes each latent's scale index from float outputs (``h_s``'s;
  for the joint model, the entropy-parameter network's along the causal chain), and a
  scale on a scale-table boundary could land on its other side on another machine: the index
  guard (:mod:`.guard`) sends the encoder's decision for every latent near a boundary
  and a CRC of the symbols, so a desynchronised decode raises
  :class:`~varicodec.errors.DesyncError` instead of returning garbage.
* The joint model's ``context_prediction`` and ``entropy_parameters`` run one
  latent position (one wavefront) at a time while decoding, so a gate over the
  whole decoded latent cannot exist there: they stay dense.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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
from .guard import (
    ABSOLUTE_MARGIN_ARCHS,
    INDEX_MARGIN,
    IndexGuard,
    absolute_margin,
    read_guards,
)
from .registry import ARCHITECTURES, VARIANTS
from .wavefront import WavefrontCoder, supports_wavefront

__all__ = ["VaricodecModel", "ARCHITECTURES", "VARIANTS", "INDEX_MARGIN"]

DEFAULT_LMBDA_RANGE = (0.0018, 0.18)

#: coding orders of an autoregressive model's latent (``compress`` / ``decompress``)
CODING_ORDERS = ("wavefront", "sequential")

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
        tests), see :class:`~.guard.IndexGuard`. ``order``: the joint model's coding order,
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
        with self._at(lm), IndexGuard(gc, margin=index_margin, per_item=per_item,
                                      mode=guard_mode, widths=widths) as guard, \
                self._analysis_layout(x) as x:
            out = self._coder(order).compress(x)
        strings = list(out["strings"])
        batch = x.shape[0]
        if self.gated:
            strings.append(self._pack_side(batch))
        if self._latents_per_item(out["shape"]) != per_item:
            raise ValueError("unexpected hyper-latent shape")
        strings.append(guard.streams(batch))
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
        checks, forced, hashed = None, None, {}
        if len(strings) > n_streams:
            if len(strings[n_streams]) != batch:
                raise ValueError("guard stream count does not match the batch")
            checks, forced, hashed = read_guards(strings[n_streams], per_item)
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
            with self._at(lm), IndexGuard(gc, forced=forced, per_item=per_item,
                                          hashed=hashed, widths=widths) as guard, \
                    self._synthesis_layout():
                out = self._coder(order).decompress(list(strings[:2]), shape)
        finally:
            for g in self._hs_gates():
                g.forced_mask = None
        if checks is not None:
            bad = [b for b, (got, want) in enumerate(zip(guard.checks(batch), checks))
                   if got != want]
            if bad:
                raise DesyncError(
                    "the decoded latent does not match the encoder's (symbol check failed"
                    + (f" for batch element {bad}" if batch > 1 else "") + "): this "
                    "machine's arithmetic went out of step with the encoder's, or the file "
                    "was altered; the picture would be garbage, so none is returned"
                )
        return {"x_hat": out["x_hat"], "y_hat": self._y_hat}


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
