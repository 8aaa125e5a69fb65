"""The shared training objective.

``L = mean_b [ R_b + λ_b · 255² · MSE_b ] + γ · S``

with ``R_b`` the bits per pixel of example ``b`` from the likelihoods, λ per
example (so one batch covers many rates), and the sparsity term ``S`` either
the paper's ``Σ_n mean_c (α_{n,c} − α_t)²`` (``regularizer="alpha"``) or a
direct target on each gated layer's sparsity ``Σ_n (s_n − s_t)²``
(``regularizer="sparsity"``), or one target on the share of the gated
convolutions' multiply-adds that the gates remove, ``(Σ_n F_n s_n / Σ_n F_n − s_t)²``
with ``F_n`` layer n's dense multiply-adds (``regularizer="flops"``): the model
then puts its sparsity where the compute is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .models import VaricodecModel

__all__ = ["RateDistortionLoss", "bpp_from_likelihoods"]


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
        if regularizer not in ("alpha", "sparsity", "flops"):
            raise ValueError("regularizer must be 'alpha', 'sparsity' or 'flops', "
                             f"got {regularizer!r}")
        self.gamma = float(gamma)
        self.regularizer = regularizer
        self.alpha_target = float(alpha_target)
        self.sparsity_target = float(sparsity_target)

    def sparsity_term(self, model: VaricodecModel) -> Tensor:
        gates = [g for _, g in model.gates()]
        dev = next(model.parameters()).device
        if not gates:
            return torch.zeros((), device=dev)
        if self.regularizer == "alpha":
            terms = [(g.alpha - self.alpha_target).pow(2).mean() for g in gates]
        elif self.regularizer == "flops":
            live = [g for g in gates if g.sparsity is not None
                    and getattr(g, "macs_per_channel", None)]
            if not live:
                return torch.zeros((), device=dev)
            macs = torch.tensor([g.macs_per_channel * g.channels for g in live],
                                dtype=torch.float32, device=dev)
            saved = (torch.stack([g.sparsity for g in live]) * macs).sum() / macs.sum()
            return (saved - self.sparsity_target).pow(2)
        else:
            terms = [(g.sparsity - self.sparsity_target).pow(2) for g in gates
                     if g.sparsity is not None]
        return torch.stack(terms).sum()

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


