"""Encoder-side latent refinement: spend encode time, not bits.

``g_a`` is trained to give good latents on average over the training set; for one
particular image the latents ``y`` and ``z`` that minimise that image's
rate-distortion cost ``R + λ·255²·MSE`` lie elsewhere (the *amortisation gap*:
Campos et al., "Content adaptive optimization for neural image compression",
CVPRW 2019; Yang, Bamler & Mandt, "Improving inference for neural image
compression", NeurIPS 2020). :func:`refine_latents` starts from ``g_a``'s and
``h_a``'s output and takes gradient steps on that cost for one image, through
the model's own entropy models, ``h_s`` and ``g_s``, with the weights frozen.

Rounding has no useful gradient, so during the steps it is relaxed by
*stochastic Gumbel annealing* (SGA, Yang et al. 2020): each value ``v`` becomes
``⌊v⌋ + p``, where ``p`` is a Gumbel-softmax sample between rounding down and
rounding up with logits ``−atanh(distance)/τ``, and the temperature ``τ`` anneals
from :data:`TAU_START` to :data:`TAU_END`, so the last steps see (almost) hard
rounding. A straight-through estimator instead gave a *worse* file than no
refinement on a validation image (docs/results/refine.md).

The decoder is unchanged: a refined file is an ordinary ``.vcd`` whose latents
were chosen by a slower encoder, decoded by the same code at the same speed. The
refined latents go through :meth:`VaricodecModel.compress` like any others, so the
guard stream and the symbol check cover them too.

Models with an autoregressive context model (``joint``, ``cheng2020-*``) are not
supported: their training pass rounds ``y`` without the means the real coder
subtracts, so the cost the steps would minimise is not the file's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..losses import bpp_from_likelihoods
from ..progress import progress_bar
from .codec_model import VaricodecModel, _CachedLatent

__all__ = [
    "DEFAULT_LR",
    "MAX_STEPS",
    "ROUNDINGS",
    "TAU_END",
    "TAU_START",
    "Refinement",
    "check_refinable",
    "fixed_latents",
    "refine_latents",
]

#: Adam's step size on the latents (their values are O(1)-O(10) quantisation bins)
DEFAULT_LR = 0.05
#: SGA temperature at the first and the last step (geometric in between)
TAU_START, TAU_END = 0.5, 0.05
#: the most steps one refinement may take (a typo guard: 1 000 take ~15 min per Kodak image)
MAX_STEPS = 10_000
#: how rounding is relaxed during the steps
ROUNDINGS = ("sga", "ste")
#: temperature of the Gumbel-softmax sample itself (Yang et al.'s choice)
_SAMPLE_TEMPERATURE = 0.5
_EPS = 1e-5


@dataclass(frozen=True)
class Refinement:
    """Refined latents of one image at one λ: ``y`` as coded (after the bit-rate
    modulator of a variable-rate model) and ``z``; ``cost_start`` / ``cost_end``:
    the relaxed RD cost (bpp + λ·255²·MSE) at the first and the last step."""

    y: Tensor
    z: Tensor
    steps: int
    cost_start: float
    cost_end: float


def check_refinable(model: VaricodecModel) -> None:
    """Raise ``ValueError`` (one line) if :func:`refine_latents` cannot serve ``model``."""
    if hasattr(model.net, "context_prediction"):
        raise ValueError(
            f"latent refinement does not support {model.name}: its autoregressive context "
            "model makes the training pass's rounding differ from the coder's; use a "
            "hyperprior or mean model"
        )


def check_steps(steps: int) -> int:
    """``steps`` as an int in ``0..MAX_STEPS``, else a one-line ``ValueError``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= MAX_STEPS:
        raise ValueError(f"refinement steps must be an integer in 0..{MAX_STEPS}, got {steps!r}")
    return steps


def _as_is(t: Tensor) -> Tensor:
    return t


@contextmanager
def fixed_latents(model: VaricodecModel, y: Tensor, z: Tensor) -> Iterator[None]:
    """Inside the block ``g_a`` returns ``y`` (as coded: the modulator, whose hook sits on
    the real ``g_a``, is not applied again) and ``h_a`` returns ``z``, so
    :meth:`VaricodecModel.compress` and the training pass code these latents."""
    net = model.net
    g_a, h_a = net.g_a, net.h_a
    net.g_a, net.h_a = _CachedLatent(y, _as_is), _CachedLatent(z, _as_is)
    try:
        yield
    finally:
        net.g_a, net.h_a = g_a, h_a


def _sga(v: Tensor, tau: float, generator: torch.Generator) -> Tensor:
    """Stochastic Gumbel annealing of ``round(v)`` at temperature ``tau``."""
    floor = torch.floor(v)
    frac = v - floor
    down = -torch.atanh(frac.clamp(_EPS - 1, 1 - _EPS)) / tau
    up = -torch.atanh((1 - frac).clamp(_EPS - 1, 1 - _EPS)) / tau
    logits = torch.stack([down, up], dim=-1)
    u = torch.rand(logits.shape, generator=generator, device=v.device, dtype=v.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)))
    p_up = torch.softmax((logits + gumbel) / _SAMPLE_TEMPERATURE, dim=-1)[..., 1]
    return floor + p_up


@contextmanager
def _relaxed_rounding(model: VaricodecModel, state: dict) -> Iterator[None]:
    """Inside the block the entropy models' evaluation-mode rounding (``"dequantize"``,
    around the means or medians as the coder does) is SGA at ``state["tau"]`` (or the
    straight-through estimator if ``state["rounding"]`` is ``"ste"``)."""
    coders = [model.net.entropy_bottleneck, model.net.gaussian_conditional]
    for em in coders:
        original = em.quantize

        def quantize(inputs: Tensor, mode: str, means: Tensor | None = None,
                     _original=original) -> Tensor:
            if mode != "dequantize":
                return _original(inputs, mode, means)
            v = inputs if means is None else inputs - means
            if state["rounding"] == "ste":  # straight-through: round, identity gradient
                out = v + (torch.round(v) - v).detach()
            else:
                out = _sga(v, state["tau"], state["generator"])
            return out if means is None else out + means

        em.quantize = quantize
    try:
        yield
    finally:
        for em in coders:
            del em.quantize


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Weights without gradients for the duration (only the latents are optimised)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def _initial_latents(model: VaricodecModel, x: Tensor, lm: Tensor | None
                     ) -> tuple[Tensor, Tensor]:
    """``y`` and ``z`` as the encoder would code them without refinement."""
    captured: dict[str, Tensor] = {}

    def keep(name: str):
        def hook(module: nn.Module, inputs, output: Tensor) -> None:
            captured[name] = output.detach().clone()
        return hook

    net = model.net
    handles = [net.g_a.register_forward_hook(keep("y")),
               net.h_a.register_forward_hook(keep("z"))]
    try:
        with torch.no_grad(), model._at(lm):
            net(x)
    finally:
        for h in handles:
            h.remove()
    # the modulator's hook was registered first, so "y" is the modulated latent
    return captured["y"], captured["z"]


def refine_latents(model: VaricodecModel, x: Tensor, lmbda: float, steps: int, *,
                   size: tuple[int, int] | None = None, lr: float = DEFAULT_LR,
                   seed: int = 0, rounding: str = "sga", progress: bool = False,
                   on_step: Callable[[int, float], None] | None = None) -> Refinement:
    """Refine the latents of one image ``x`` (1×3×H×W in [0, 1], padded to the model's
    multiple) for ``steps`` Adam steps on ``bpp + λ·255²·MSE`` at ``lmbda`` (the λ
    the file will carry). ``size``: the image's height and width before padding
    (rate and distortion count those pixels only). ``seed`` fixes the Gumbel noise,
    so one machine at one thread count refines the same image to the same latents.
    ``rounding``: ``"sga"`` (the default) or ``"ste"`` (straight-through; for comparison).
    ``on_step(step, cost)``, if given, is called after each step (1-based), e.g. to
    report progress.
    """
    check_refinable(model)
    check_steps(steps)
    if rounding not in ROUNDINGS:
        raise ValueError(f"unknown rounding {rounding!r}; choose from {ROUNDINGS}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"refinement takes one image (1×3×H×W), got {tuple(x.shape)}")
    h, w = size or (x.shape[2], x.shape[3])
    was_training = model.training
    model.eval()
    with torch.inference_mode(False), torch.enable_grad(), _frozen(model):
        x = x.detach().clone()  # a normal tensor even if the caller is in inference mode
        lm = model._lmbda_batch(lmbda, 1, x.device) if model.variable_rate else None
        y0, z0 = _initial_latents(model, x, lm)
        y, z = y0.clone().requires_grad_(True), z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([y, z], lr=lr)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        state = {"tau": TAU_START, "generator": generator, "rounding": rounding}
        target = x[..., :h, :w]
        costs: list[float] = []
        bar = progress_bar(steps, "refine", "step", enabled=progress and steps > 0)
        try:
            for i in range(steps):
                state["tau"] = TAU_START * (TAU_END / TAU_START) ** (i / max(1, steps - 1))
                with _relaxed_rounding(model, state), fixed_latents(model, y, z), \
                        model._at(lm):
                    out = model.net(x)
                bpp = bpp_from_likelihoods(out["likelihoods"], h * w)[0]
                mse = ((out["x_hat"][..., :h, :w].clamp(0, 1) - target) ** 2).mean()
                cost = bpp + float(lmbda) * 255**2 * mse
                gy, gz = torch.autograd.grad(cost, [y, z])
                y.grad, z.grad = gy, gz
                opt.step()
                costs.append(float(cost.detach()))
                bar.update(1)
                bar.set_postfix(cost=f"{costs[-1]:.4f}")
                if on_step is not None:
                    on_step(i + 1, costs[-1])
        finally:
            bar.close()
            model.train(was_training)
    if costs and not math.isfinite(costs[-1]):
        raise ValueError("latent refinement diverged (non-finite cost); try fewer steps")
    return Refinement(y=y.detach(), z=z.detach(), steps=steps,
                      cost_start=costs[0] if costs else math.nan,
                      cost_end=costs[-1] if costs else math.nan)
