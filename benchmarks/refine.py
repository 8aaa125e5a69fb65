"""What latent refinement (``varicodec encode --refine STEPS``) buys, per quality and steps.

For every image, quality and refinement budget the image is encoded twice with the
same model, plainly and refined, and both files are decoded by the ordinary decoder.
Reported per (quality, steps), as means over the images: the change of the real file
size (bpp, header included), of the decoded PSNR, and of the real rate-distortion cost
``J = bpp + λ·255²·MSE`` that refinement minimises; the encode time against the plain
encode of the same image in the same run (wall-clock and process CPU time: on a shared
machine the CPU-time ratio is the stable one). The same decoder reads both files; its
time on each (fastest of 3, one file after the other, so under the same load) and its
gates' sparsity show whether other latents make it slower.

Tune on the validation images, never on Kodak (the default ``--data`` is the validation
folder)::

    nice python benchmarks/refine.py --quality 1,4,8 --steps 25,50,100 --limit 2 \\
        --json docs/results/refine/val-sweep.json

``--compare PLAIN.json REFINED.json`` reads two ``varicodec eval`` results of the same
weights on the same images (one with ``--refine``) and gives the same per-quality
changes, image by image at equal λ, with the count of images whose cost fell and the
encode time ratio (each file's times as ``eval`` measured them: comparable only if both
ran under the same load and thread count; decoding is timed by the encoding mode, where
plain and refined files of each image are decoded one after the other)::

    python benchmarks/refine.py --compare docs/results/gpu/hyperprior-ecgbm-128-w2.json \\
        docs/results/refine/kodak-refine50.json
"""

from __future__ import annotations

import argparse
import json
import math
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
#: decodes of each file; its decode time is the fastest
DECODE_REPS = 3


def _coded(arr: np.ndarray, model, quality: float, refine: int, options: dict) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    r = encode_image(arr, model, quality=quality, refine=refine, compute_psnr=False,
                     refine_options=options)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    decode_s = math.inf
    for _ in range(DECODE_REPS):  # the fastest of a few: less noise from a shared machine
        t0 = time.perf_counter()
        decoded = np.asarray(decode(r.data, model).convert("RGB"))
        decode_s = min(decode_s, time.perf_counter() - t0)
    # what the decoder's gates did with these latents (a gated model: g_s and h_s)
    sparsity = model.sparsity()
    db = psnr_db(arr, decoded)
    mse = 10 ** (-db / 10)  # over a peak of 255, i.e. MSE of [0, 1] values
    return {"bpp": r.bpp, "psnr_db": db, "cost": r.bpp + r.lmbda * 255**2 * mse,
            "lmbda": r.lmbda, "encode_s": wall, "encode_cpu_s": cpu, "decode_s": decode_s,
            "decoder_sparsity": statistics.fmean(sparsity.values()) if sparsity else None}


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
                     for k in ("bpp", "cost", "encode_s", "encode_cpu_s", "decode_s")}
            summary.append({
                "quality": q, "lmbda": quality_to_lmbda(q), "steps": n, "images": len(sel),
                "bpp_change_pct": 100 * (ratio["bpp"] - 1),
                "psnr_change_db": statistics.fmean(r["refined"]["psnr_db"]
                                                   - r["plain"]["psnr_db"] for r in sel),
                "cost_change_pct": 100 * (ratio["cost"] - 1),
                "encode_time_ratio": ratio["encode_s"],
                "encode_cpu_ratio": ratio["encode_cpu_s"],
                "decode_time_ratio": ratio["decode_s"],
            })
            if sel[0]["plain"]["decoder_sparsity"] is not None:
                for k in ("plain", "refined"):
                    summary[-1][f"decoder_sparsity_{k}"] = statistics.fmean(
                        r[k]["decoder_sparsity"] for r in sel)
    return {"model": m.name, "threads": torch.get_num_threads(), "options": options,
            "summary": summary, "rows": rows}


def _cost(row: dict, lmbda: float) -> float:
    """``bpp + λ·255²·MSE`` of one image row of an eval result."""
    return row["bpp"] + lmbda * 255**2 * 10 ** (-row["psnr_db"] / 10)


def compare(plain: dict, refined: dict) -> dict:
    """Per-λ changes from ``plain`` to ``refined`` (two ``varicodec eval`` results)."""
    by_lmbda = {round(p["lmbda"], 9): p for p in plain["points"]}
    summary = []
    for rp in refined["points"]:
        pp = by_lmbda.get(round(rp["lmbda"], 9))
        if pp is None:
            continue
        if pp["fingerprint"] != rp["fingerprint"]:
            raise ValueError(f"lambda {rp['lmbda']:g}: the two results measured other weights")
        plain_images = {r["image"]: r for r in pp["images"]}
        pairs = [(plain_images[r["image"]], r) for r in rp["images"]
                 if r["image"] in plain_images]
        if not pairs:
            raise ValueError(f"lambda {rp['lmbda']:g}: no image in common")
        lm = rp["lmbda"]
        ratios = [_cost(b, lm) / _cost(a, lm) for a, b in pairs]
        summary.append({
            "quality": rp["quality"], "lmbda": lm, "images": len(pairs),
            "plain_bpp": statistics.fmean(a["bpp"] for a, _ in pairs),
            "plain_psnr_db": statistics.fmean(a["psnr_db"] for a, _ in pairs),
            "refined_bpp": statistics.fmean(b["bpp"] for _, b in pairs),
            "refined_psnr_db": statistics.fmean(b["psnr_db"] for _, b in pairs),
            "bpp_change_pct": 100 * (statistics.fmean(b["bpp"] / a["bpp"] for a, b in pairs) - 1),
            "psnr_change_db": statistics.fmean(b["psnr_db"] - a["psnr_db"] for a, b in pairs),
            "cost_change_pct": 100 * (statistics.fmean(ratios) - 1),
            "images_improved": sum(r < 1 for r in ratios),
            "encode_time_ratio": statistics.fmean(b["encode_s"] for _, b in pairs)
            / statistics.fmean(a["encode_s"] for a, _ in pairs),
        })
    if not summary:
        raise ValueError("the two results share no lambda")
    return {"plain": plain["label"], "refined": refined["label"], "summary": summary}


def compare_table(result: dict) -> str:
    lines = ["| quality | images | plain bpp / PSNR | refined bpp / PSNR | bpp change | "
             "PSNR change | J change | images with lower J | encode time × |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        lines.append(
            f"| {round(s['quality'], 2):g} | {s['images']} | {s['plain_bpp']:.3f} / "
            f"{s['plain_psnr_db']:.2f} | {s['refined_bpp']:.3f} / {s['refined_psnr_db']:.2f} | "
            f"{s['bpp_change_pct']:+.1f} % | {s['psnr_change_db']:+.2f} dB | "
            f"{s['cost_change_pct']:+.1f} % | {s['images_improved']} | "
            f"{s['encode_time_ratio']:.0f} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = ["| quality | steps | images | bpp change | PSNR change | J change | encode time × "
             "(wall / CPU) | decode time × | decoder sparsity (plain → refined) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in result["summary"]:
        sp = (f"{s['decoder_sparsity_plain']:.3f} → {s['decoder_sparsity_refined']:.3f}"
              if "decoder_sparsity_plain" in s else "n/a")
        lines.append(f"| {s['quality']:g} | {s['steps']} | {s['images']} | "
                     f"{s['bpp_change_pct']:+.1f} % | {s['psnr_change_db']:+.2f} dB | "
                     f"{s['cost_change_pct']:+.1f} % | {s['encode_time_ratio']:.0f} / "
                     f"{s['encode_cpu_ratio']:.0f} | {s['decode_time_ratio']:.2f} | {sp} |")
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
    p.add_argument("--compare", nargs=2, metavar=("PLAIN.json", "REFINED.json"),
                   help="compare two varicodec eval results instead of encoding")
    args = p.parse_args(argv)
    if args.compare:
        from varicodec.eval.results import load_results

        try:
            result = compare(*(load_results(f) for f in args.compare))
        except (ValueError, OSError) as e:
            print(f"refine: error: {e}", file=sys.stderr)
            return 2
        print(compare_table(result))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        return 0
    data = Path(args.data)
    if not data.is_dir():
        print(f"refine: no image folder at {data} (see ../shared/data/README.md); "
              "nothing measured", file=sys.stderr)
        return 1
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
