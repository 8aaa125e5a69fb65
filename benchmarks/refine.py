"""What latent refinement (``varicodec encode --refine STEPS``) buys, per quality and steps.

For every image, quality and refinement budget the image is encoded twice with the
same model, plainly and refined, and both files are decoded by the ordinary decoder.
Reported per (quality, steps), as means over the images: the change of the real file
size (bpp, header included), of the decoded PSNR, and of the real rate-distortion cost
``J = bpp + λ·255²·MSE`` that refinement minimises; the encode time against the plain
encode of the same image in the same run (wall-clock and process CPU time: on a shared
machine the CPU-time ratio is the stable one). Decoding is unchanged by construction
(the same decoder reads both files) and not timed here.

Tune on the validation images, never on Kodak (the default ``--data`` is the validation
folder)::

    nice python benchmarks/refine.py --quality 1,4,8 --steps 25,50,100 --limit 3 \\
        --json docs/results/refine/val-sweep.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from varicodec.codec import decode, encode_image, resolve_model
from varicodec.eval.runner import list_images, parse_values
from varicodec.imageio import open_image
from varicodec.metrics import psnr_db
from varicodec.models.refine import DEFAULT_LR, ROUNDINGS
from varicodec.quality import quality_to_lmbda

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "val"


def _coded(arr: np.ndarray, model, quality: float, refine: int, options: dict) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    r = encode_image(arr, model, quality=quality, refine=refine, compute_psnr=False,
                     refine_options=options)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    decoded = np.asarray(decode(r.data, model).convert("RGB"))
    db = psnr_db(arr, decoded)
    mse = 10 ** (-db / 10)  # over a peak of 255, i.e. MSE of [0, 1] values
    return {"bpp": r.bpp, "psnr_db": db, "cost": r.bpp + r.lmbda * 255**2 * mse,
            "lmbda": r.lmbda, "encode_s": wall, "encode_cpu_s": cpu}


def run(images: list[Path], model, qualities: list[float], steps: list[int],
        options: dict | None = None, progress: bool = True) -> dict:
    options = options or {}
    m = resolve_model(model)
    rows = []
    for path in images:
        arr = open_image(path).pixels()[..., :3]
        for q in qualities:
            plain = _coded(arr, m, q, 0, {})
            for n in steps:
                refined = _coded(arr, m, q, n, options)
                rows.append({"image": path.name, "quality": q, "steps": n,
                             "plain": plain, "refined": refined})
                if progress:
                    print(f"{path.name} q{q:g} {n} steps: {plain['bpp']:.4f} bpp "
                          f"{plain['psnr_db']:.2f} dB -> {refined['bpp']:.4f} bpp "
                          f"{refined['psnr_db']:.2f} dB, cost "
                          f"{100 * (refined['cost'] / plain['cost'] - 1):+.1f} %",
                          file=sys.stderr, flush=True)
    summary = []
    for q in qualities:
        for n in steps:
            sel = [r for r in rows if r["quality"] == q and r["steps"] == n]
            ratio = {k: statistics.fmean(r["refined"][k] / r["plain"][k] for r in sel)
                     for k in ("bpp", "cost", "encode_s", "encode_cpu_s")}
            summary.append({
                "quality": q, "lmbda": quality_to_lmbda(q), "steps": n, "images": len(sel),
                "bpp_change_pct": 100 * (ratio["bpp"] - 1),
                "psnr_change_db": statistics.fmean(r["refined"]["psnr_db"]
                                                   - r["plain"]["psnr_db"] for r in sel),
                "cost_change_pct": 100 * (ratio["cost"] - 1),
                "encode_time_ratio": ratio["encode_s"],
                "encode_cpu_ratio": ratio["encode_cpu_s"],
            })
    return {"model": m.name, "threads": torch.get_num_threads(), "options": options,
            "summary": summary, "rows": rows}


def table(result: dict) -> str:
    lines = ["| quality | steps | images | bpp change | PSNR change | J change | encode time × "
             "(wall / CPU) |", "|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(f"| {s['quality']:g} | {s['steps']} | {s['images']} | "
                     f"{s['bpp_change_pct']:+.1f} % | {s['psnr_change_db']:+.2f} dB | "
                     f"{s['cost_change_pct']:+.1f} % | {s['encode_time_ratio']:.0f} / "
                     f"{s['encode_cpu_ratio']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of images (default: val)")
    p.add_argument("--model", help="registry name or .safetensors (default: bundled)")
    p.add_argument("--quality", default="1,4,8", help="qualities, e.g. 1,4,8 or 1..8")
    p.add_argument("--steps", default="50", help="refinement budgets, e.g. 25,50,100")
    p.add_argument("--limit", type=int, help="only the first K images")
    p.add_argument("--lr", type=float, default=DEFAULT_LR, help="Adam step size on the latents")
    p.add_argument("--rounding", choices=ROUNDINGS, default="sga",
                   help="relaxed rounding during the steps (sga: the encoder's; ste: for "
                   "comparison)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"refine: no image folder at {data} (see ../shared/data/README.md); skipped",
              file=sys.stderr)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = [int(s) for s in parse_values(args.steps, "steps")]
    result = run(list_images(data, args.limit), args.model,
                 parse_values(args.quality, "quality"), steps,
                 {"lr": args.lr, "rounding": args.rounding})
    print(table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
