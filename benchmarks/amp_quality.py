"""Does bf16 autocast cost rate-distortion? Two short runs from scratch, fp32 vs bf16.

Trains the recipe's model from scratch twice with everything equal (seed, data order,
λ draws, steps) except ``amp``, validates both at the end (in float32, on the recipe's
validation crops, at λ min / middle / max) and reports the validation R-D loss
``bpp_est + λ·255²·MSE`` of each and their relative difference. The fast GPU path is
accepted when bf16 is within 1 % after 2 000 steps.

    python benchmarks/amp_quality.py --config configs/gpu/hyperprior-bm.yaml --steps 2000 \
        --out docs/results/amp_quality-gpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

import numpy as np
import torch

from varicodec.train import load_config
from varicodec.train.loop import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-4, help="from-scratch learning rate")
    ap.add_argument("--amp", default="bf16", choices=["bf16", "bf16-inner"],
                    help="the reduced-precision setting to compare with fp32")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as runs:
        for amp in (None, a.amp):
            name = amp or "fp32"
            cfg = load_config(a.config, set_values={
                "amp": amp, "time_budget_minutes": None, "steps": a.steps, "lr": a.lr,
                "modulator_lr": 5 * a.lr, "lr_decay_at": [], "val_every": a.steps,
                "out_dir": runs, "name": name, "init": None, "log_every": 100})
            t0 = time.time()
            run = train(cfg)
            from varicodec.train.checkpoint import load_checkpoint

            _, _, meta = load_checkpoint(run / "checkpoint.safetensors")
            val = meta["history"][-1]
            results[name] = {
                "wall_s": round(time.time() - t0, 1),
                "val_rd_loss": float(np.mean([p["rd_loss"] for p in val["points"]])),
                "points": [{k: p[k] for k in ("lmbda", "bpp_est", "psnr_db", "rd_loss")}
                           for p in val["points"]],
            }
            print(f"{name}: validation R-D loss {results[name]['val_rd_loss']:.4f} "
                  f"({results[name]['wall_s']} s)", flush=True)
    rel = results[a.amp]["val_rd_loss"] / results["fp32"]["val_rd_loss"] - 1
    out = {"command": "python benchmarks/amp_quality.py " + " ".join(sys.argv[1:]),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "steps": a.steps, "amp": a.amp, "results": results, "amp_vs_fp32_relative": rel,
           "within_1_percent": abs(rel) <= 0.01}
    print(f"{a.amp} vs fp32 validation R-D loss: {100 * rel:+.2f} %")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
