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
implementation serves all three architectures.

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
  latent position at a time while decoding, so a gate over the whole decoded
  latent cannot exist there: they stay dense.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from compressai.models import (
    JointAutoregressiveHierarchicalPriors,
    MeanScaleHyperprior,
    ScaleHyperprior,
)
from torch import Tensor, nn

from ..layers import BitrateModulator, EnergyChannelGate, LmbdaRange, gates_of, insert_gates

__all__ = ["VaricodecModel", "ARCHITECTURES", "VARIANTS"]

#: architecture name → (CompressAI class, default N, default M)
ARCHITECTURES: dict[str, tuple[type[nn.Module], int, int]] = {
    "hyperprior": (ScaleHyperprior, 128, 192),
    "mean": (MeanScaleHyperprior, 128, 192),
    "joint": (JointAutoregressiveHierarchicalPriors, 192, 192),
}

#: variant → (gated, modulated)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "base": (False, False),
    "ecg": (True, False),
    "bm": (False, True),
    "ecgbm": (True, True),
}

#: submodules that decode position by position and so stay ungated
_UNGATED = ("context_prediction", "entropy_parameters")

DEFAULT_LMBDA_RANGE = (0.0018, 0.18)


class VaricodecModel(nn.Module):
    """One of the twelve models: ``{hyperprior, mean, joint} × {base, ecg, bm, ecgbm}``.

    Args:
        arch: ``"hyperprior"``, ``"mean"`` or ``"joint"``.
        variant: ``"base"``, ``"ecg"``, ``"bm"`` or ``"ecgbm"``.
        N, M: channel widths (defaults: CompressAI's quality 1–5 configs).
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
        cls, n_default, m_default = ARCHITECTURES[arch]
        N, M = int(N or n_default), int(M or m_default)
        self.arch, self.variant = arch, variant
        self.gated, self.variable_rate = VARIANTS[variant]
        self.config = dict(
            arch=arch, variant=variant, N=N, M=M, lmbda=float(lmbda),
            lmbda_range=[float(v) for v in lmbda_range],
            lmbda_ref=lmbda_ref, gate=dict(gate or {}), bm_hidden=bm_hidden,
        )
        self.net = cls(N=N, M=M)
        self.lmbda = float(lmbda)
        self.gated_layers: list[str] = []
        if self.gated:
            self.gated_layers = insert_gates(self.net, skip=_UNGATED, **(gate or {}))
        self.lmbda_range: LmbdaRange | None = None
        self.autocast_dtype: torch.dtype | None = None
        self.compiled = False
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

    def set_autocast(self, dtype: torch.dtype | None, compile: bool = False) -> None:
        """Training speed-ups on the transforms ``g_a``, ``h_a``, ``h_s``, ``g_s``.

        ``dtype`` (e.g. ``torch.bfloat16``) runs them under autocast, their outputs
        cast back to float32, so the bit-rate modulator, the quantiser, the entropy
        models and the likelihoods stay in float32 (so do the joint model's context
        and entropy-parameter networks). ``compile`` wraps each in ``torch.compile``
        (fuses GDN's and the gates' element-wise work). ``set_autocast(None)`` restores
        the plain float32 modules.
        """
        self.autocast_dtype, self.compiled = dtype, bool(compile)
        for name in self.TRANSFORMS:
            module = getattr(self.net, name)
            module.__dict__.pop("forward", None)       # back to the class's forward
            forward = module.forward
            if dtype is not None:
                forward = _AutocastForward(forward, dtype)
            if compile:
                forward = torch.compile(forward, dynamic=False)
            if forward is not module.forward:
                module.forward = forward

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

    @torch.no_grad()
    def compress(self, x: Tensor, lmbda: float | None = None) -> dict:
        """Entropy-code ``x``.

        Returns ``{"strings": [y, z] (+ [gates] if gated), "shape": z's H×W,
        "lmbda": the λ used, "lmbda_code": its 16-bit code or None}``; each
        stream is a list with one byte string per batch element.
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
        with self._at(lm):
            out = self.net.compress(x)
        strings = list(out["strings"])
        if self.gated:
            strings.append(self._pack_side(x.shape[0]))
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
    def decompress(self, strings: list[list[bytes]], shape, lmbda_code: int | None = None) -> dict:
        """Inverse of :meth:`compress`. Returns ``{"x_hat", "y_hat"}``.

        ``y_hat`` is the entropy-decoded latent (before the inverse modulator).
        """
        n_streams = 3 if self.gated else 2
        if len(strings) != n_streams:
            raise ValueError(f"{self.name} expects {n_streams} streams, got {len(strings)}")
        batch = len(strings[0])
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
        try:
            with self._at(lm):
                out = self.net.decompress(list(strings[:2]), shape)
        finally:
            for g in self._hs_gates():
                g.forced_mask = None
        return {"x_hat": out["x_hat"], "y_hat": self._y_hat}


class _AutocastForward:
    """A module's ``forward`` run under autocast, returning float32."""

    def __init__(self, forward, dtype: torch.dtype) -> None:
        self.forward, self.dtype = forward, dtype

    def __call__(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            out = self.forward(x)
        return out.float()


class _CachedLatent(nn.Module):
    """Stands in for ``g_a`` while :meth:`VaricodecModel.cached_analysis` is active."""

    def __init__(self, y: Tensor, post) -> None:
        super().__init__()
        self.y, self.post = y, post

    def forward(self, x: Tensor) -> Tensor:
        return self.post(self.y)
