"""How long each ``configs/zoo/`` recipe takes on one GPU: an estimate from a measured rate.

The measured rates are for ScaleHyperprior at N=128, M=192 (the baseline), batch 32 of
256² crops: dense (base/bm) and gated (ecg/ecgbm) steps/s, given on the command line
from docs/results/gpu-training.md. A recipe's rate is the baseline's divided by

* the ratio of its training forward's FLOPs to the baseline's (same variant family; both
  counted in this run by ``varicodec.eval.flops.count_flops`` on one 256² crop, gates
  open as at step 0), and
* the ratio of pixels per step (batch × crop²) to the baseline's 32 × 256².

FLOPs are the convolutions'; part of a step is element-wise work (GDN, the loss, the
gates) that grows with N rather than N², so for the larger models this estimate is more
likely long than short. It is an estimate, not a measurement: no GPU ran these recipes.

    python benchmarks/zoo_job_time.py --dense-steps-per-s 39.6 --gated-steps-per-s 22.9
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from varicodec import create_model
from varicodec.eval.flops import count_flops
from varicodec.models import parse_name
from varicodec.train import load_config

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ("hyperprior", 128, 192, 32, 256)   # arch, N, M, batch, crop of the measured rate


def forward_flops(arch: str, gated: bool, n: int, m: int, cache: dict) -> int:
    key = (arch, gated, n, m)
    if key not in cache:
        torch.manual_seed(0)
        model = create_model(f"{arch}-{'ecg' if gated else 'base'}", N=n, M=m).train()
        x = torch.rand(1, 3, 256, 256)
        with torch.no_grad():
            _, cache[key] = count_flops(model, x)
    return cache[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dense-steps-per-s", type=float, required=True,
                    help="measured steps/s of the baseline's dense model (base/bm)")
    ap.add_argument("--gated-steps-per-s", type=float, required=True,
                    help="measured steps/s of the baseline's gated model (ecg/ecgbm)")
    ap.add_argument("--configs", default=str(ROOT / "configs" / "zoo"))
    ap.add_argument("--out", help="also write the rows as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cache: dict = {}
    b_arch, b_n, b_m, b_batch, b_crop = BASELINE
    rows = []
    for path in sorted(Path(args.configs).glob("*.yaml")):
        cfg = load_config(path)
        arch, variant = parse_name(cfg.model)
        gated = variant in ("ecg", "ecgbm")
        flops = forward_flops(arch, gated, cfg.N, cfg.M, cache)
        base = forward_flops(b_arch, gated, b_n, b_m, cache)
        pixels = cfg.batch_size * cfg.crop**2 / (b_batch * b_crop**2)
        rate = (args.gated_steps_per_s if gated else args.dense_steps_per_s) / (
            flops / base * pixels)
        rows.append({"recipe": path.name, "model": cfg.model, "N": cfg.N, "M": cfg.M,
                     "steps": cfg.steps, "flops_ratio": round(flops / base, 3),
                     "steps_per_s": round(rate, 1),
                     "hours": round(cfg.steps / rate / 3600, 2)})
    print("| recipe | model | N/M | steps | FLOPs × baseline | est. steps/s | est. hours |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| `{r['recipe']}` | {r['model']} | {r['N']}/{r['M']} | {r['steps']} | "
              f"{r['flops_ratio']:.2f} | {r['steps_per_s']:.1f} | {r['hours']:.2f} |")
    for arch in ("hyperprior", "mean", "joint"):
        total = sum(r["hours"] for r in rows if r["model"].startswith(f"{arch}-"))
        print(f"{arch}: {total:.1f} GPU hours in all", file=sys.stderr)
    print(f"all: {sum(r['hours'] for r in rows):.1f} GPU hours", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps({"baseline": BASELINE, "args": vars(args),
                                              "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
