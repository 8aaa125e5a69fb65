"""Energy-based channel gating (ECG).

A gate sits in front of a convolution and zeroes the input channels whose
energy is low compared with their neighbours'. For an input ``x`` of shape
``B×C×H×W``::

    e_c   = mean_{h,w} x_c²                      intra-channel energy   (B×C)
    l_c   = (k ∗ e)_c ,  k ≥ 0, Σk = 1           1-D conv across channels (B×C)
    th_c  = α_c · l_c                            learnable adjustment α (C)
    g_c   = 1[e_c > th_c]                        hard gate at inference
    out   = x ⊙ g

``k`` is an ECA-style kernel (size from ``C``, odd) whose weights are a softmax
over learnable logits, so the threshold stays a weighted local mean of energies
and ``α`` reads as "keep channels above α times the local mean". ``α = 0`` lets
every non-zero channel through, which makes a freshly gated model identical to
the dense one it was initialised from. Larger ``α`` → higher threshold → sparser.

Training uses a straight-through estimator: the forward value is the hard gate,
the gradient is that of ``sigmoid((e/l − α) / τ)``.

Inference (the sparse path). At batch size 1 outside training a gated
convolution does not multiply its input by the gate: it gathers the live input
channels and the matching weight slice and runs the convolution on that smaller
problem, so the work of the convolution scales with ``1 − sparsity``.
Transposed convolutions run it in channels-last (NHWC) layout, where oneDNN's
kernels are about 2× faster on CPU than in NCHW, and hand channels-last
activations on (outputs with fewer than 4 channels, i.e. images, come back in
the standard layout); plain convolutions gain nothing from NHWC there and stay
in NCHW, which also keeps the encoder's arithmetic closest to the dense one.
The result equals the masked dense computation up to float rounding.
:func:`varicodec.layers.sparse_execution` switches the path off or picks the
layout.

What the gate cannot save: to decide, it needs the energy of every input
channel, so the layer producing those channels (its convolution, bias, GDN or
ReLU) runs in full, gated-off channels included; only the consuming
convolution shrinks. ``docs/results/sparse.md`` measures what that costs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EnergyChannelGate",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "eca_kernel_size",
    "insert_gates",
    "gates_of",
]


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
    """ECA-Net's adaptive kernel size: the odd number nearest ``log2(C)/γ + b/γ``."""
    t = int(abs(math.log2(max(channels, 2)) / gamma + b / gamma))
    return max(3, t if t % 2 else t + 1)


class EnergyChannelGate(nn.Module):
    """Zero the low-energy input channels of a convolution.

    Args:
        channels: number of input channels ``C``.
        kernel_size: size of the 1-D cross-channel kernel (default: ECA rule).
        alpha_init: initial value of the adjustment vector ``α``.
        temperature: width ``τ`` of the sigmoid surrogate, in units of ``e/l``.

    What a gate exposes (read by the losses, reports and the codec; ``None``
    before the first forward pass):
        ``mask``: ``B×C`` bool, the hard gate (every pass).
        ``sparsity``: scalar, fraction of channels gated off (every pass;
            straight-through: the value is the hard fraction, the gradient flows to ``α``).
        ``unstable``: bool, some decision lay within a relative ``1e-4`` of its
            threshold, so float noise on another machine could flip it (inference).
        ``macs_per_channel``: int, dense multiply-adds of the guarded convolution per
            input channel at the last full-size pass, reported by that convolution
            through :meth:`record_macs` (the FLOP regulariser weighs layers by it).
        ``forced_mask``: ``B×C`` bool set by the decoder to impose the encoder's
            decisions (the gate side stream), else ``None``.
    """

    STABILITY_TOL = 1e-4

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        alpha_init: float = 0.0,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.kernel_size = int(kernel_size or eca_kernel_size(channels))
        if self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd, got {self.kernel_size}")
        self.kernel_logits = nn.Parameter(torch.zeros(self.kernel_size))
        self.alpha = nn.Parameter(torch.full((self.channels,), float(alpha_init)))
        self.temperature = float(temperature)
        self.forced_mask: Tensor | None = None
        self.mask: Tensor | None = None
        self.sparsity: Tensor | None = None
        self.unstable = False
        self.macs_per_channel: int | None = None

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"

    def record_macs(self, macs_per_channel: int) -> None:
        """Called by the guarded convolution: its dense multiply-adds per input channel."""
        self.macs_per_channel = int(macs_per_channel)

    @property
    def dense_macs(self) -> int | None:
        """Multiply-adds of the guarded convolution with every channel live."""
        return None if self.macs_per_channel is None else self.macs_per_channel * self.channels

    def threshold(self, energy: Tensor) -> tuple[Tensor, Tensor]:
        """Threshold ``α ⊙ (k ∗ e)`` and local mean ``k ∗ e``, both ``B×C``."""
        k = torch.softmax(self.kernel_logits, dim=0).view(1, 1, -1)
        pad = self.kernel_size // 2
        local = F.conv1d(F.pad(energy.unsqueeze(1), (pad, pad), mode="replicate"), k)
        return self.alpha * local.squeeze(1), local.squeeze(1)

    #: bytes of one block of pixels squared at a time by :meth:`energy`
    ENERGY_BLOCK_BYTES = 1 << 21

    @staticmethod
    def energy(x: Tensor) -> Tensor:
        """Per-channel energy ``mean_{h,w} x²`` (``B×C``) without a ``B×C×H×W``
        temporary (used at inference; equal to ``x.pow(2).mean((2, 3))`` up to
        float rounding, a few 1e-7 relative).

        A full-size temporary costs more than the arithmetic on CPU: a fresh
        50 MB buffer is page-faulted in on every call (measured 60–150 ms at
        128×256×384 on the 2-core machine, against 15–45 ms here).
        """
        b, c, h, w = x.shape
        if x.is_contiguous():
            # NCHW: reduce over the contiguous inner dims in one fused pass
            e = torch.linalg.vector_norm(x, dim=(2, 3))
            return e.square_().div_(h * w)
        if not x.is_contiguous(memory_format=torch.channels_last):
            return x.pow(2).mean(dim=(2, 3))
        # NHWC: the norm kernel is slow over strided dims; square blocks of
        # pixel rows (small, reused buffers) and accumulate
        rows = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        step = max(1, EnergyChannelGate.ENERGY_BLOCK_BYTES // (c * x.element_size()))
        acc = torch.zeros(b, c, dtype=x.dtype, device=x.device)
        for block in rows.split(step, dim=1):
            acc += block.square().sum(dim=1)
        return acc.div_(h * w)

    def decide(self, x: Tensor) -> Tensor:
        """Return the gate ``B×C`` (float; hard values, surrogate gradient in training)."""
        if self.training:
            energy = x.pow(2).mean(dim=(2, 3))
        else:
            energy = self.energy(x)
        th, local = self.threshold(energy)
        hard = energy > th
        if self.training:
            ratio = energy / local.clamp_min(1e-12)
            soft = torch.sigmoid((ratio - self.alpha) / self.temperature)
            gate = hard.to(x.dtype) + soft - soft.detach()
        else:
            gate = hard.to(x.dtype)
            scale = torch.maximum(energy, th)
            close = (energy - th).abs() <= self.STABILITY_TOL * scale
            self.unstable = bool((close & (scale > 1e-10)).any())
        return gate

    def evaluate(self, x: Tensor) -> Tensor:
        """Decide without applying: return the gate ``B×C`` and set ``mask``,
        ``sparsity`` and ``unstable`` exactly as :meth:`forward` does.
        """
        if self.forced_mask is not None:
            gate = self.forced_mask.to(x.dtype)
            self.unstable = False
        else:
            gate = self.decide(x)
        self.mask = gate.detach() > 0.5
        self.sparsity = 1.0 - gate.mean()
        return gate

    def forward(self, x: Tensor) -> Tensor:
        return x * self.evaluate(x)[:, :, None, None]


_CL = torch.channels_last


def _gather_channels(x: Tensor, idx: Tensor) -> Tensor:
    """``x[:, idx]`` as a channels-last tensor, in one copy.

    From channels-last input the gather runs on the ``(B·H·W)×C`` matrix
    view, where ``index_select`` is a plain strided copy; the same gather
    through the 4-D channels-last tensor is about 10× slower.
    """
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=_CL) and not x.is_contiguous():
        rows = x.permute(0, 2, 3, 1).reshape(b * h * w, c)
        return rows.index_select(1, idx).view(b, h, w, idx.numel()).permute(0, 3, 1, 2)
    return x.index_select(1, idx).contiguous(memory_format=_CL)


class _GatedMixin:
    """Shared logic of gated convolutions: gate, then run on the live channels only.

    With ``sparse`` on (the default), at inference with batch size 1 the
    convolution runs on the active input channels and the matching weight
    slice (see the module docstring); otherwise the input is multiplied by
    the gate and the full convolution runs (the masked dense computation).
    ``sparse_channels_last`` picks the layout of the sparse path (default:
    :attr:`default_channels_last` of the class).
    """

    gate: EnergyChannelGate
    sparse: bool
    sparse_channels_last: bool
    in_channels: int
    out_channels: int
    groups: int
    padding_mode: str
    weight: Tensor
    training: bool

    #: input-channel axis of ``weight`` (1 for Conv2d, 0 for ConvTranspose2d)
    _weight_in_dim = 1
    #: layout of the sparse path unless set otherwise (measured on a 2-core CPU,
    #: docs/results/sparse.md: NHWC halves transposed convolutions, not plain ones)
    default_channels_last = False

    def __init__(self, *args, gate_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)  # the convolution's own
        self.gate = EnergyChannelGate(self.in_channels, **(gate_kwargs or {}))
        self.sparse = True
        self.sparse_channels_last = self.default_channels_last

    def _dense(self, out: Tensor) -> Tensor:
        """Record the dense multiply-adds per input channel (for a FLOP-weighted
        sparsity target, :class:`varicodec.losses.RateDistortionLoss`) and pass ``out``."""
        kernel = self.weight[0, 0].numel()
        self.gate.record_macs(out.shape[1] * out.shape[2] * out.shape[3] * kernel // self.groups)
        return out

    def _sparse_applies(self, x: Tensor) -> bool:
        return (
            self.sparse and not self.training and x.dim() == 4 and x.shape[0] == 1
            and self.groups == 1 and self.padding_mode == "zeros"
        )

    def _sparse_operands(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Decide the gate and return ``(live input, weight slice)``."""
        self.gate.evaluate(x)
        assert self.gate.mask is not None
        idx = self.gate.mask[0].nonzero().flatten()
        layout = _CL if self.sparse_channels_last else torch.contiguous_format
        if idx.numel() == self.in_channels:
            return x.contiguous(memory_format=layout), self.weight.contiguous(memory_format=layout)
        if idx.numel() == 0:
            # an all-off input contributes nothing: one zero channel keeps the
            # output shape and leaves exactly the bias
            xs = x.new_zeros((1, 1, *x.shape[2:])).contiguous(memory_format=layout)
            w = self.weight.narrow(self._weight_in_dim, 0, 1)
            return xs, w.contiguous(memory_format=layout)
        if self.sparse_channels_last:
            xs = _gather_channels(x, idx)
        else:
            xs = x.contiguous().index_select(1, idx)
        w = self.weight.index_select(self._weight_in_dim, idx).contiguous(memory_format=layout)
        return xs, w

    def _sparse_result(self, out: Tensor) -> Tensor:
        # images (≤ 3 channels) leave in the standard layout; it costs little there
        return out.contiguous() if self.out_channels < 4 else out


class GatedConv2d(_GatedMixin, nn.Conv2d):
    """``nn.Conv2d`` with an :class:`EnergyChannelGate` on its input.

    Subclassing keeps the state-dict keys of the wrapped convolution
    (``weight``, ``bias``) so dense checkpoints load into gated models.
    """

    _weight_in_dim = 1
    default_channels_last = False

    def forward(self, x: Tensor) -> Tensor:
        if not self._sparse_applies(x):
            return self._dense(super().forward(self.gate(x)))
        xs, w = self._sparse_operands(x)
        out = F.conv2d(xs, w, self.bias, self.stride, self.padding, self.dilation, 1)
        return self._sparse_result(out)


class GatedConvTranspose2d(_GatedMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with an :class:`EnergyChannelGate` on its input."""

    _weight_in_dim = 0
    default_channels_last = True

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if not self._sparse_applies(x):
            return self._dense(super().forward(self.gate(x), output_size))
        output_padding = self._output_padding(
            x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation,
        )
        xs, w = self._sparse_operands(x)
        out = F.conv_transpose2d(
            xs, w, self.bias, self.stride, self.padding, output_padding, 1, self.dilation,
        )
        return self._sparse_result(out)


def _gated_copy(conv: nn.Conv2d | nn.ConvTranspose2d, gate_kwargs: dict) -> nn.Module:
    common = dict(
        in_channels=conv.in_channels, out_channels=conv.out_channels,
        kernel_size=conv.kernel_size, stride=conv.stride, padding=conv.padding,
        dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None,
        padding_mode=conv.padding_mode, gate_kwargs=gate_kwargs,
    )
    if isinstance(conv, nn.ConvTranspose2d):
        new: nn.Module = GatedConvTranspose2d(output_padding=conv.output_padding, **common)
    else:
        new = GatedConv2d(**common)
    new.load_state_dict(conv.state_dict(), strict=False)
    return new.to(conv.weight.device, conv.weight.dtype)


def insert_gates(
    module: nn.Module,
    skip: tuple[str, ...] = (),
    min_channels: int = 4,
    **gate_kwargs,
) -> list[str]:
    """Put an :class:`EnergyChannelGate` before every convolution of ``module``.

    Every ``nn.Conv2d`` / ``nn.ConvTranspose2d`` with at least ``min_channels``
    input channels (so not the first RGB convolution) is replaced in place by
    its gated twin, weights kept. Submodules whose qualified name starts with
    one of ``skip`` are left alone, as are subclasses with their own forward
    (e.g. CompressAI's ``MaskedConv2d``). Returns the names of gated layers.
    """
    gated: list[str] = []
    for name, child in list(module.named_modules()):
        for child_name, conv in list(child.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            if any(full == s or full.startswith(s + ".") for s in skip):
                continue
            if type(conv) not in (nn.Conv2d, nn.ConvTranspose2d):
                continue
            if conv.in_channels < min_channels:
                continue
            setattr(child, child_name, _gated_copy(conv, gate_kwargs))
            gated.append(full)
    return gated


def gates_of(module: nn.Module, prefix: str = "") -> list[tuple[str, EnergyChannelGate]]:
    """All gates of ``module`` (optionally under ``prefix``), in module order."""
    return [
        (n, m) for n, m in module.named_modules()
        if isinstance(m, EnergyChannelGate) and n.startswith(prefix)
    ]
