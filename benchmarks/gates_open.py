"""Where a gated model's loss sits: its gates opened, one layer (or part) at a time.

A gated model (``ecg``/``ecgbm``) is coded for real on the first Kodak images as trained,
then with the gates of one layer — or of one part, ``g_a``, ``g_s``, ``h_a``, ``h_s``, or
all — forced open (every channel passes) and the rest as trained. A layer whose opening
changes neither bytes nor PSNR closes channels that carry nothing; one whose opening
raises the rate gates what the encoder would otherwise code; one whose opening *lowers*
PSNR is a layer the weights learned to rely on being gated. Also the per-layer sparsity
of the model as trained. Used in docs/results/paper.md (section 2, "Why the drop is this
large")::

    python benchmarks/gates_open.py checkpoints/paper/ablation-lr-ecg-q1.safetensors --limit 4 \\
        --json docs/results/paper/gates-open-ablation-lr-ecg-q1.json

A variable-rate model is coded at ``--lmbda`` (default its middle quality's λ).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
PARTS = ("g_a", "g_s", "h_a", "h_s")


def code(model, images: list[np.ndarray], lmbda: float | None,
         sparsity: list[dict] | None = None) -> tuple[float, float]:
    """Mean bpp (real bytes) and mean PSNR (dB) of ``images`` through ``model``; each
    image's per-layer sparsity appended to ``sparsity`` when given."""
    from varicodec import codec
    from varicodec.metrics import psnr_db

    bpp, psnr = [], []
    for rgb in images:
        kw = {"lmbda": lmbda} if lmbda is not None else {}
        data = codec.encode(rgb, model, **kw)
        dec = np.asarray(codec.decode(data, model).convert("RGB"), dtype=np.uint8)
        bpp.append(len(data) * 8 / (rgb.shape[0] * rgb.shape[1]))
        psnr.append(psnr_db(rgb, dec))
        if sparsity is not None:
            sparsity.append(model.sparsity())
    return float(np.mean(bpp)), float(np.mean(psnr))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="a gated model's weights (.safetensors)")
    ap.add_argument("--images", default=str(KODAK), help="image folder (default: Kodak)")
    ap.add_argument("--limit", type=int, default=4, help="first K images (default 4)")
    ap.add_argument("--lmbda", type=float, help="λ of a variable-rate model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args(argv)

    from varicodec.imageio import load_rgb
    from varicodec.models import load_model
    from varicodec.quality import QUALITY_LMBDAS

    folder = Path(a.images)
    paths = sorted(p for p in folder.glob("*.png"))[: a.limit] if folder.is_dir() else []
    if not paths:
        print(f"gates_open: no PNG images in {folder} (Kodak lives in ../shared/data/kodak)",
              file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    model = load_model(a.model)
    if not model.gated:
        print(f"gates_open: {a.model} is {model.name}, not a gated model", file=sys.stderr)
        return 2
    lmbda = (a.lmbda or QUALITY_LMBDAS[3]) if model.variable_rate else None
    images = [load_rgb(p) for p in paths]

    gates = model.gates()
    trained = {n: g.alpha.detach().clone() for n, g in gates}
    per_image: list[dict] = []
    bpp0, psnr0 = code(model, images, lmbda, per_image)
    sparsity = {n: float(np.mean([s[n] for s in per_image])) for n in per_image[0]}
    rows = [{"opened": "none (as trained)", "sparsity": None, "bpp": bpp0, "psnr_db": psnr0}]
    layers = [n.removeprefix("net.") for n, _ in gates]
    for target in [*layers, *PARTS, "all"]:
        with torch.no_grad():
            for n, g in gates:
                g.alpha.copy_(trained[n])
                name = n.removeprefix("net.")
                if target in ("all", name) or name.startswith(f"{target}."):
                    g.alpha.fill_(-1e4)  # threshold far below any energy: every channel passes
        bpp, psnr = code(model, images, lmbda)
        rows.append({"opened": target, "sparsity": sparsity.get(f"net.{target}"),
                     "bpp": bpp, "psnr_db": psnr})
        print(f"  opened {target:>8}: {bpp:.4f} bpp {psnr:.2f} dB", file=sys.stderr, flush=True)

    print(f"{a.model}: {len(images)} images of {folder}"
          + (f", λ={lmbda:g}" if lmbda is not None else ""))
    print("\n| gates opened | its sparsity as trained (mean) | bpp | PSNR (dB) | Δ bpp "
          "| Δ PSNR (dB) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        s = "" if r["sparsity"] is None else f"{r['sparsity']:.3f}"
        print(f"| {r['opened']} | {s} | {r['bpp']:.4f} | {r['psnr_db']:.2f} | "
              f"{r['bpp'] - bpp0:+.4f} | {r['psnr_db'] - psnr0:+.2f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"model": a.model, "images": [p.name for p in paths],
                                            "lmbda": lmbda, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
