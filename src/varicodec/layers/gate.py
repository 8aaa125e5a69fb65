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

    Attributes set by every forward pass (read by losses, reports and the codec):
        ``mask``: ``B×C`` bool, the hard gate.
        ``sparsity``: scalar, fraction of channels gated off (straight-through:
            the value is the hard fraction, the gradient flows to ``α``).
        ``unstable``: bool, some decision lay within a relative ``1e-4`` of its
            threshold, so float noise on another machine could flip it.
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

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}"

    def threshold(self, energy: Tensor) -> tuple[Tensor, Tensor]:
        """Threshold ``α ⊙ (k ∗ e)`` and local mean ``k ∗ e``, both ``B×C``."""
        k = torch.softmax(self.kernel_logits, dim=0).view(1, 1, -1)
        pad = self.kernel_size // 2
        local = F.conv1d(F.pad(energy.unsqueeze(1), (pad, pad), mode="replicate"), k)
        return self.alpha * local.squeeze(1), local.squeeze(1)

    def decide(self, x: Tensor) -> Tensor:
        """Return the gate ``B×C`` (float; hard values, surrogate gradient in training)."""
        energy = x.pow(2).mean(dim=(2, 3))
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

    def forward(self, x: Tensor) -> Tensor:
        if self.forced_mask is not None:
            gate = self.forced_mask.to(x.dtype)
            self.unstable = False
        else:
            gate = self.decide(x)
        self.mask = gate.detach() > 0.5
        self.sparsity = 1.0 - gate.mean()
        return x * gate[:, :, None, None]


class _GatedMixin:
    """Shared logic of gated convolutions: gate, then run on the live channels only.

    With ``sparse`` on (the default), at inference with batch size 1 the
    convolution runs on the active input channels and the matching weight slice;
    the result equals the masked dense computation.
    """

    gate: EnergyChannelGate
    sparse: bool

    def _active(self, x: Tensor) -> Tensor | None:
        if not self.sparse or self.training or x.shape[0] != 1:
            return None
        assert self.gate.mask is not None
        idx = self.gate.mask[0].nonzero().flatten()
        if idx.numel() == 0 or idx.numel() == self.gate.channels:
            return None  # nothing to slice (an all-off input is all zeros: dense is exact)
        return idx


class GatedConv2d(_GatedMixin, nn.Conv2d):
    """``nn.Conv2d`` with an :class:`EnergyChannelGate` on its input.

    Subclassing keeps the state-dict keys of the wrapped convolution
    (``weight``, ``bias``) so dense checkpoints load into gated models.
    """

    def __init__(self, *args, gate_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = EnergyChannelGate(self.in_channels, **(gate_kwargs or {}))
        self.sparse = True

    def forward(self, x: Tensor) -> Tensor:
        x = self.gate(x)
        idx = self._active(x)
        if idx is None:
            return super().forward(x)
        return F.conv2d(
            x.index_select(1, idx), self.weight.index_select(1, idx), self.bias,
            self.stride, self.padding, self.dilation, self.groups,
        )


class GatedConvTranspose2d(_GatedMixin, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with an :class:`EnergyChannelGate` on its input."""

    def __init__(self, *args, gate_kwargs: dict | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = EnergyChannelGate(self.in_channels, **(gate_kwargs or {}))
        self.sparse = True

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        x = self.gate(x)
        idx = self._active(x)
        if idx is None:
            return super().forward(x, output_size)
        return F.conv_transpose2d(
            x.index_select(1, idx), self.weight.index_select(0, idx), self.bias,
            self.stride, self.padding, self.output_padding, self.groups, self.dilation,
        )


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
