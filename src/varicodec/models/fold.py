"""Turn a variable-rate model into the fixed-rate model it is at one λ.

The bit-rate modulator multiplies the analysis output by ``m(λ)`` and the synthesis input
by the learned inverse ``m̃(λ)``, one gain per latent channel. At a fixed λ both gains are
constants, so they fold exactly into the weights around them: ``m`` scales the output
channels (weight rows and bias) of the last analysis convolution, ``m̃`` the input
channels of the first synthesis convolution. The result is a ``base`` model that codes
exactly like the ``bm`` model at that λ: a starting point for per-λ fine-tuning that all
fixed-rate models share (configs/paper/).

Gated models are refused: the first synthesis gate looks at the energies of the
*modulated* latent, which folding would change.
"""

from __future__ import annotations

import torch
from torch import nn

from .codec_model import VaricodecModel
from .registry import create_model

__all__ = ["fold_bitrate_modulator"]


def _last_conv(seq: nn.Module) -> nn.Module:
    convs = [m for m in seq.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    return convs[-1]


def _first_conv(seq: nn.Module) -> nn.Module:
    return next(m for m in seq.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)))


@torch.no_grad()
def fold_bitrate_modulator(model: VaricodecModel, lmbda: float) -> VaricodecModel:
    """The ``base`` model equal to the variable-rate ``model`` at ``lmbda`` (eval mode).

    Raises ValueError for fixed-rate or gated models and for λ outside the trained range.
    """
    if not model.variable_rate:
        raise ValueError(f"{model.name} is already fixed-rate: nothing to fold")
    if model.gated:
        raise ValueError(f"{model.name} is gated: its first synthesis gate sees the modulated "
                         "latent, so the modulator cannot be folded exactly")
    lmbda = model.lmbda_range.check(float(lmbda))
    cfg = dict(model.config)
    cfg.update(variant="base", lmbda=lmbda)
    fixed = create_model(f"{model.arch}-base", **cfg)
    state = {k: v for k, v in model.state_dict().items()
             if not k.startswith(("modulator.", "demodulator."))}
    fixed.load_state_dict(state)

    lam = torch.tensor([lmbda])
    gain = model.modulator(lam)[0]
    inverse = model.demodulator(lam)[0]
    last = _last_conv(fixed.net.g_a)
    if not isinstance(last, nn.Conv2d) or last.out_channels != gain.numel():
        raise ValueError(f"{model.arch}: cannot find the analysis output convolution")
    last.weight.mul_(gain.view(-1, 1, 1, 1).to(last.weight.dtype))
    if last.bias is not None:
        last.bias.mul_(gain.to(last.bias.dtype))
    first = _first_conv(fixed.net.g_s)
    if isinstance(first, nn.ConvTranspose2d):  # weight: in × out × k × k
        first.weight.mul_(inverse.view(-1, 1, 1, 1).to(first.weight.dtype))
    else:  # weight: out × in × k × k
        first.weight.mul_(inverse.view(1, -1, 1, 1).to(first.weight.dtype))
    return fixed.eval()
