"""Training throughput of each variant against a plain CompressAI training loop.

For one architecture, times optimisation steps (forward, loss, backward, Adam step,
auxiliary step) of the four varicodec variants and of the bare CompressAI model with a
hand-written R + λ·255²·MSE loss, on the same random batch. Rounds are interleaved
(base, ecg, bm, ecgbm, compressai, base, …) so machine load hits all alike; the
reported figure is the median step time and its ratio to CompressAI's in the same run.

    python benchmarks/train_throughput.py --arch hyperprior --N 128 --M 192 \
        --batch 8 --crop 128 --rounds 5 --steps 4 --out docs/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

from varicodec import RateDistortionLoss, create_model
from varicodec.models import ARCHITECTURES


def _step_fn(model, kind: str, x: torch.Tensor, lm: torch.Tensor):
    params = [p for n, p in model.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in model.named_parameters() if n.endswith(".quantiles")]
    opt, aux_opt = torch.optim.Adam(params, 1e-5), torch.optim.Adam(aux, 1e-5)
    if kind == "compressai":
        def loss_fn():
            out = model(x)
            n = x.shape[-2] * x.shape[-1]
            bpp = sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / (n * len(x))
            return bpp + lm.mean() * 255**2 * (out["x_hat"] - x).pow(2).mean()
    else:
        crit = RateDistortionLoss(gamma=1.0 if model.gated else 0.0, regularizer="sparsity")

        def loss_fn():
            return crit(model(x, lmbda=lm if model.variable_rate else None), x, model)["loss"]

    def step():
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        a = model.aux_loss()
        aux_opt.zero_grad()
        a.backward()
        aux_opt.step()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="hyperprior", choices=sorted(ARCHITECTURES))
    ap.add_argument("--N", type=int, default=64)
    ap.add_argument("--M", type=int, default=96)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.rand(a.batch, 3, a.crop, a.crop)
    lm = torch.exp(torch.empty(a.batch).uniform_(math.log(0.0018), math.log(0.18)))
    build = ARCHITECTURES[a.arch].build
    kinds = ["base", "ecg", "bm", "ecgbm", "compressai"]
    steps = {}
    for k in kinds:
        if k == "compressai":
            model = build(a.N, a.M).train()
        else:
            model = create_model(f"{a.arch}-{k}", N=a.N, M=a.M).train()
            for _, g in model.gates():
                g.alpha.data.fill_(0.8)   # gates part-way closed, as during training
        steps[k] = _step_fn(model, k, x, lm)
        steps[k]()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(a.rounds):
        for k in kinds:
            t = time.perf_counter()
            for _ in range(a.steps):
                steps[k]()
            times[k].append((time.perf_counter() - t) / a.steps)
    ref = statistics.median(times["compressai"])
    result = {
        "command": "python benchmarks/train_throughput.py " + " ".join(
            f"--{k} {v}" for k, v in vars(a).items() if v is not None and k != "out"),
        "arch": a.arch, "N": a.N, "M": a.M, "batch": a.batch, "crop": a.crop,
        "threads": a.threads, "loadavg_1min": os.getloadavg()[0],
        "median_step_s": {k: statistics.median(v) for k, v in times.items()},
        "steps_per_s": {k: 1 / statistics.median(v) for k, v in times.items()},
        "time_ratio_vs_compressai": {k: statistics.median(v) / ref for k, v in times.items()},
    }
    print(f"{'variant':<11} {'s/step':>8} {'steps/s':>8} {'× CompressAI time':>18}")
    for k in kinds:
        print(f"{k:<11} {result['median_step_s'][k]:8.3f} {result['steps_per_s'][k]:8.2f} "
              f"{result['time_ratio_vs_compressai'][k]:18.3f}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
