"""Tiny coding models (N = M = 16) whose bitstreams carry real information.

A randomly initialised CompressAI model has analysis outputs of about ±0.05, so every
``y`` and ``z`` symbol rounds to 0 and "compress → decompress equals forward" compares
an 8-byte stream with itself. :func:`tiny_model` rescales the last layer of ``g_a`` and
of ``h_a`` so that, on :func:`texture`, ``y`` and ``z`` have a standard deviation of a
few quantisation steps (tens of distinct symbols); :func:`coded_symbols` records what
the entropy coders really coded, and :func:`assert_rich` checks it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from torch import Tensor, nn

from varicodec.models import VaricodecModel, create_model

#: the latents' target standard deviations, in quantisation steps
Y_STD, Z_STD = 4.0, 4.0
#: "non-trivial": more distinct symbols than this in each of the y and z streams
MIN_DISTINCT = 8


def texture(h: int = 128, w: int = 64, seed: int = 0) -> Tensor:
    """A 1×3×h×w image with structure at several scales (smooth blobs, edges, noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g),
                                             size=(h, w), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    stripes = 0.25 * ((xx + 2 * yy) // 7 % 2).float()
    return (0.6 * coarse + stripes + 0.1 * torch.rand(1, 3, h, w, generator=g)).clamp(0, 1)


def wake(model: VaricodecModel, image: Tensor, y_std: float = Y_STD,
         z_std: float = Z_STD) -> VaricodecModel:
    """Scale the last layers of ``g_a`` and ``h_a`` so that ``y`` and ``z`` of ``image``
    (before the modulator) have the given standard deviations."""
    net = model.net
    run = torch.nn.Sequential.forward  # the plain transforms, without the modulator's hooks
    with torch.no_grad():
        y = run(net.g_a, image)
        s = float(y.std())
        net.g_a[-1].weight.mul_(y_std / s)
        net.g_a[-1].bias.mul_(y_std / s)
        y = run(net.g_a, image)
        z = run(net.h_a, y.abs() if model.arch == "hyperprior" else y)
        s = float(z.std())
        net.h_a[-1].weight.mul_(z_std / s)
        net.h_a[-1].bias.mul_(z_std / s)
        # and h_s's last convolution, so that the predicted scales span the scale table
        # (its smallest entry, 0.11, would otherwise take them all)
        last = [m for m in net.h_s.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
        p = run(net.h_s, torch.round(run(net.h_a, y.abs() if model.arch == "hyperprior" else y)))
        s = float(p.std())
        last[-1].weight.mul_(y_std / s)
        last[-1].bias.mul_(y_std / s)
    return model


def tiny_model(name: str = "hyperprior-ecgbm", seed: int = 0, alpha: float | None = None,
               **kw) -> VaricodecModel:
    """An eval-mode tiny model, woken on :func:`texture`, entropy tables built.

    ``alpha`` opens the gates of a gated model part way (``None``: as initialised)."""
    torch.manual_seed(seed)
    model = create_model(name, N=16, M=16, **kw).eval()
    if alpha is not None:
        for _, g in model.gates():
            g.alpha.data.fill_(alpha)
    wake(model, texture())
    model.update(force=True)
    return model


@contextmanager
def coded_symbols() -> Iterator[dict[str, list[Tensor]]]:
    """Record the integer symbols handed to the entropy coders inside the block:
    ``{"y": [...], "z": [...]}`` (``GaussianConditional`` and ``EntropyBottleneck``)."""
    seen: dict[str, list[Tensor]] = {"y": [], "z": []}
    originals = {cls: cls.quantize for cls in (GaussianConditional, EntropyBottleneck)}

    def spy(key, original):
        def quantize(self, inputs, mode, means=None):
            out = original(self, inputs, mode, means)
            if mode == "symbols":
                seen[key].append(out.detach().reshape(-1).cpu())
            return out
        return quantize

    GaussianConditional.quantize = spy("y", originals[GaussianConditional])
    EntropyBottleneck.quantize = spy("z", originals[EntropyBottleneck])
    try:
        yield seen
    finally:
        for cls, f in originals.items():
            cls.quantize = f


def distinct(seen: dict[str, list[Tensor]]) -> dict[str, int]:
    return {k: int(torch.cat(v).unique().numel()) if v else 0 for k, v in seen.items()}


def assert_rich(seen: dict[str, list[Tensor]], minimum: int = MIN_DISTINCT) -> None:
    """Both streams coded more than ``minimum`` distinct symbols."""
    counts = distinct(seen)
    assert all(n > minimum for n in counts.values()), f"trivial streams: {counts} distinct"


def compress_rich(model: VaricodecModel, x: Tensor, lmbda: float | None = None,
                  **kw) -> dict:
    """``model.compress(x, lmbda, **kw)``, asserting that both streams are non-trivial."""
    with coded_symbols() as seen:
        c = model.compress(x, lmbda=lmbda, **kw)
    assert_rich(seen)
    return c
