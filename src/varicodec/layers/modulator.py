"""Bit-rate modulator (BM).

Two fully connected layers map the trade-off factor λ to a positive gain per
latent channel. The encoder codes ``Q(y ⊙ m(λ))``; the decoder multiplies the
decoded latent by a learned inverse gain ``m⁻(λ)`` before synthesis. λ enters
as its normalised logarithm

    u = (ln λ − ln λ_min) / (ln λ_max − ln λ_min) ∈ [0, 1].

Initialisation follows high-rate quantisation theory: the best step size scales
as ``λ^{-1/2}``, so the layers start at ``m(λ) = (λ / λ_ref)^{1/2}`` (and the
inverse at its reciprocal). A model fine-tuned from a fixed-rate one trained at
``λ_ref`` therefore starts out exact at ``λ_ref`` and sensible elsewhere.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["BitrateModulator", "LmbdaRange"]


class LmbdaRange:
    """A closed range of λ with the normalisation and 16-bit code used in files."""

    CODE_MAX = 65535

    def __init__(self, lmbda_min: float, lmbda_max: float) -> None:
        if not 0 < lmbda_min < lmbda_max:
            raise ValueError(f"need 0 < lmbda_min < lmbda_max, got {lmbda_min}, {lmbda_max}")
        self.min = float(lmbda_min)
        self.max = float(lmbda_max)
        self._lo = math.log(self.min)
        self._span = math.log(self.max) - self._lo

    def __repr__(self) -> str:
        return f"LmbdaRange({self.min:g}, {self.max:g})"

    def check(self, lmbda: float) -> float:
        lmbda = float(lmbda)
        # 1e-6 relative slack: λ passed through float32 must still count as in range
        if math.isnan(lmbda) or not self.min * (1 - 1e-6) <= lmbda <= self.max * (1 + 1e-6):
            raise ValueError(
                f"lambda {lmbda:g} is outside this model's trained range "
                f"[{self.min:g}, {self.max:g}]"
            )
        return min(max(lmbda, self.min), self.max)

    def normalize(self, lmbda: Tensor) -> Tensor:
        return (torch.log(lmbda) - self._lo) / self._span

    def encode(self, lmbda: float) -> int:
        """16-bit code of λ (uniform in log λ). Raises ``ValueError`` out of range."""
        u = (math.log(self.check(lmbda)) - self._lo) / self._span
        return int(round(u * self.CODE_MAX))

    def decode(self, code: int) -> float:
        if not 0 <= int(code) <= self.CODE_MAX:
            raise ValueError(f"lambda code {code} out of range 0..{self.CODE_MAX}")
        return math.exp(self._lo + self._span * int(code) / self.CODE_MAX)

    def coded(self, lmbda: float) -> float:
        """The λ a file carries when asked for ``lmbda``: its code, decoded."""
        return self.decode(self.encode(lmbda))


class BitrateModulator(nn.Module):
    """``m(λ) = exp(W₂ relu(W₁ u + b₁) + b₂)``, one positive gain per channel.

    Args:
        channels: number of latent channels ``M``.
        lmbda_range: the trained range of λ.
        lmbda_ref: λ at which the initial gain is 1 (default: geometric middle).
        exponent: initial slope of ``ln m`` against ``ln λ`` (``+0.5`` for the
            encoder's modulator, ``-0.5`` for the decoder's inverse).
        hidden: width of the hidden layer.

    Input ``lmbda``: shape ``(B,)``; output: ``B×M``.
    """

    def __init__(
        self,
        channels: int,
        lmbda_range: LmbdaRange,
        lmbda_ref: float | None = None,
        exponent: float = 0.5,
        hidden: int = 64,
    ) -> None:
        super().__init__()
        self.range = lmbda_range
        self.fc1 = nn.Linear(1, hidden)
        self.fc2 = nn.Linear(hidden, channels)
        ref = lmbda_ref if lmbda_ref is not None else math.sqrt(lmbda_range.min * lmbda_range.max)
        u_ref = (math.log(ref) - lmbda_range._lo) / lmbda_range._span
        with torch.no_grad():
            # Hidden unit 0 carries u itself (u ∈ [0, 1], so relu is the identity);
            # the output layer turns it into exponent·(ln λ − ln λ_ref).
            self.fc1.weight[0] = 1.0
            self.fc1.bias[0] = 0.0
            self.fc2.weight.zero_()
            self.fc2.weight[:, 0] = exponent * lmbda_range._span
            self.fc2.bias.fill_(-exponent * lmbda_range._span * u_ref)

    def forward(self, lmbda: Tensor) -> Tensor:
        u = self.range.normalize(lmbda.reshape(-1, 1).float())
        return torch.exp(self.fc2(torch.relu(self.fc1(u))))
