"""The shared training objective.

``L = mean_b [ R_b + λ_b · 255² · MSE_b ] + γ · S``

with ``R_b`` the bits per pixel of example ``b`` from the likelihoods, λ per
example (so one batch covers many rates), and the sparsity term ``S`` either
the paper's ``Σ_n mean_c (α_{n,c} − α_t)²`` (``regularizer="alpha"``) or a
direct target on each gated layer's sparsity ``Σ_n (s_n − s_t)²``
(``regularizer="sparsity"``), or one target on the share of the gated
convolutions' multiply-adds that the gates remove, ``(Σ_n F_n s_n / Σ_n F_n − s_t)²``
with ``F_n`` layer n's dense multiply-adds (``regularizer="flops"``): the model
then puts its sparsity where the compute is. The three are the table
:data:`REGULARIZERS`; each reads only what the gates declare they expose
(:class:`~varicodec.layers.EnergyChannelGate`: ``alpha``, ``sparsity``,
``dense_macs``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .layers import EnergyChannelGate
from .models import VaricodecModel

__all__ = ["REGULARIZERS", "RateDistortionLoss", "bpp_from_likelihoods"]


def alpha_term(gates: Sequence[EnergyChannelGate], target: float) -> Tensor | None:
    """The paper's ``Σ_n mean_c (α_{n,c} − α_t)²``."""
    return torch.stack([(g.alpha - target).pow(2).mean() for g in gates]).sum()


def sparsity_term(gates: Sequence[EnergyChannelGate], target: float) -> Tensor | None:
    """``Σ_n (s_n − s_t)²`` over the layers that ran (straight-through to ``α``)."""
    terms = [(g.sparsity - target).pow(2) for g in gates if g.sparsity is not None]
    return torch.stack(terms).sum() if terms else None


def flops_term(gates: Sequence[EnergyChannelGate], target: float) -> Tensor | None:
    """``(Σ_n F_n s_n / Σ_n F_n − s_t)²``, ``F_n`` the dense multiply-adds of layer n."""
    live = [g for g in gates if g.sparsity is not None and g.dense_macs]
    if not live:
        return None
    macs = torch.tensor([g.dense_macs for g in live], dtype=torch.float32,
                        device=live[0].alpha.device)
    saved = (torch.stack([g.sparsity for g in live]) * macs).sum() / macs.sum()
    return (saved - target).pow(2)


#: regulariser name → (term of the gates, the :class:`RateDistortionLoss` attribute
#: holding its target)
REGULARIZERS: dict[str, tuple[Callable[[Sequence[EnergyChannelGate], float], Tensor | None],
                              str]] = {
    "alpha": (alpha_term, "alpha_target"),
    "sparsity": (sparsity_term, "sparsity_target"),
    "flops": (flops_term, "sparsity_target"),
}


def bpp_from_likelihoods(likelihoods: dict[str, Tensor], num_pixels: int) -> Tensor:
    """Estimated bits per pixel of each example, shape ``(B,)``."""
    bits = sum(
        (-torch.log2(lk.clamp_min(1e-9))).flatten(1).sum(1) for lk in likelihoods.values()
    )
    return bits / num_pixels


class RateDistortionLoss(nn.Module):
    """Rate + λ·255²·MSE + γ·sparsity term, for every variant.

    Args:
        gamma: weight ``γ`` of the sparsity term (0 switches it off).
        regularizer: ``"alpha"`` (paper) or ``"sparsity"`` (direct target).
        alpha_target: ``α_t`` for the paper's regulariser.
        sparsity_target: ``s_t`` for the direct one.
    """

    def __init__(self, gamma: float = 0.0, regularizer: str = "alpha",
                 alpha_target: float = 1.0, sparsity_target: float = 0.5) -> None:
        super().__init__()
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {', '.join(map(repr, REGULARIZERS))}, "
                             f"got {regularizer!r}")
        self.gamma = float(gamma)
        self.regularizer = regularizer
        self.alpha_target = float(alpha_target)
        self.sparsity_target = float(sparsity_target)

    def sparsity_term(self, model: VaricodecModel) -> Tensor:
        gates = [g for _, g in model.gates()]
        term, target = REGULARIZERS[self.regularizer]
        value = term(gates, getattr(self, target)) if gates else None
        return torch.zeros((), device=next(model.parameters()).device) if value is None else value

    def forward(self, output: dict, target: Tensor, model: VaricodecModel) -> dict[str, Tensor]:
        """Returns ``loss``, ``bpp``, ``mse``, ``psnr_db``, ``sparsity`` and ``reg`` (scalars)."""
        b, _, h, w = target.shape
        bpp = bpp_from_likelihoods(output["likelihoods"], h * w)
        mse = (output["x_hat"] - target).pow(2).flatten(1).mean(1)
        lmbda = output["lmbda"].to(mse.dtype)
        rd = (bpp + lmbda * 255**2 * mse).mean()
        reg = self.sparsity_term(model)
        gates = [g.sparsity for _, g in model.gates() if g.sparsity is not None]
        sparsity = torch.stack(gates).mean().detach() if gates else torch.zeros(())
        mse_mean = mse.mean().detach()
        return {
            "loss": rd + self.gamma * reg,
            "bpp": bpp.mean().detach(),
            "mse": mse_mean,
            "psnr_db": -10 * torch.log10(mse_mean.clamp_min(1e-10)),
            "sparsity": sparsity,
            "reg": reg.detach(),
        }


