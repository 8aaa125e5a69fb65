"""Figures from results files: RD curves, FLOPs against quality, gate sparsity.

Panels, each drawn only when some input has its data:

* rate–distortion, bpp (real file size) against PSNR (dB);
* rate–distortion, bpp against MS-SSIM in dB (``−10·log10(1 − MS-SSIM)``);
* complexity: GFLOPs per image against PSNR, encoder (solid) and decoder (dotted);
* sparsity per gated layer: mean over rate points, shaded from min to max.

``references`` adds CompressAI's published Kodak curves
(:mod:`varicodec.eval.reference`) to the first panel.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .reference import reference_results
from .results import curve

__all__ = ["plot_results"]


#: published reference curves: grey shades and markers per architecture
_REFERENCE_STYLE = {"hyperprior": ("0.55", "^"), "mean": ("0.3", "v"), "joint": ("0.0", "D")}


def _style(result: dict) -> dict:
    kind = result.get("kind")
    if kind == "codec":
        return {"linestyle": "--", "marker": "s", "markersize": 3}
    if kind == "reference":
        color, marker = _REFERENCE_STYLE.get((result.get("model") or {}).get("arch"), ("0.3", "^"))
        return {"linestyle": ":", "marker": marker, "markersize": 4, "color": color}
    return {"linestyle": "-", "marker": "o", "markersize": 4}


def _sparsity_layers(result: dict) -> tuple[list[str], np.ndarray] | None:
    layers: list[str] = []
    for p in result["points"]:
        for name in p.get("sparsity") or {}:
            if name not in layers:
                layers.append(name)
    if not layers:
        return None
    table = np.array([[(p.get("sparsity") or {}).get(n, np.nan) for n in layers]
                      for p in result["points"]], dtype=float)
    return layers, table


def plot_results(
    results: Sequence[dict],
    output: str | os.PathLike,
    references: Sequence[str] = (),
    title: str | None = None,
    max_bpp: float | None = None,
) -> Path:
    """Draw the panels for ``results`` (loaded results files) into ``output`` (PNG, PDF, SVG).

    ``max_bpp`` limits the rate axis of the RD panels (points beyond it are left out).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = list(results)
    refs = [reference_results(a) for a in references]
    if not results and not refs:
        raise ValueError("nothing to plot")
    panels = ["psnr"]
    if any(curve(r, "ms_ssim_db")[0] for r in results):
        panels.append("msssim")
    if any(curve(r, "encoder_flops", "psnr_db")[0] for r in results):
        panels.append("flops")
    gated = [(r, s) for r in results if (s := _sparsity_layers(r)) is not None]
    if gated:
        panels.append("sparsity")

    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 4.6 * nrows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    color_of = {id(r): colors[i % len(colors)] for i, r in enumerate(results)}
    flat = list(axes.flat)
    for ax in flat[len(panels):]:
        ax.axis("off")

    for ax, panel in zip(flat, panels):
        if panel in ("psnr", "msssim"):
            metric = "psnr_db" if panel == "psnr" else "ms_ssim_db"
            for r in results + (refs if panel == "psnr" else []):
                xs, ys = curve(r, metric)
                if max_bpp is not None:
                    keep = [i for i, x in enumerate(xs) if x <= max_bpp]
                    xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
                if xs:
                    style = {"color": color_of.get(id(r))} | _style(r)
                    ax.plot(xs, ys, label=r["label"], **style)
            if max_bpp is not None:
                ax.set_xlim(0, max_bpp)
            ax.set_xlabel("rate (bpp, real file size)")
            ax.set_ylabel("PSNR (dB, RGB)" if panel == "psnr" else "MS-SSIM (dB)")
            ax.set_title("Rate–distortion" + (" (MS-SSIM)" if panel == "msssim" else ""))
        elif panel == "flops":
            for r in results:
                for key, ls, part in (("encoder_flops", "-", "enc"), ("decoder_flops", ":", "dec")):
                    xs, ys = curve(r, key, "psnr_db")
                    if xs:
                        ax.plot(xs, np.asarray(ys) / 1e9, linestyle=ls, marker="o", markersize=3,
                                color=color_of[id(r)], label=f"{r['label']} ({part})")
            ax.set_xlabel("PSNR (dB, RGB)")
            ax.set_ylabel("GFLOPs per image (2 per multiply–add)")
            ax.set_title("Complexity")
        else:
            for r, (layers, table) in gated:
                mean = np.nanmean(table, axis=0)
                xs = np.arange(len(layers))
                ax.plot(xs, mean, marker="o", markersize=3, color=color_of[id(r)],
                        label=r["label"])
                ax.fill_between(xs, np.nanmin(table, axis=0), np.nanmax(table, axis=0),
                                color=color_of[id(r)], alpha=0.2)
            layers = gated[0][1][0]
            ax.set_xticks(np.arange(len(layers)))
            ax.set_xticklabels([n.removeprefix("net.") for n in layers], rotation=60,
                               fontsize=7, ha="right")
            ax.set_ylim(0, 1)
            ax.set_ylabel("sparsity (fraction of input channels off)")
            ax.set_title("Gate sparsity per layer (band: range over rates)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=150)
    plt.close(fig)
    return output
