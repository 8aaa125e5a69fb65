"""Training-loop throughput, old path against the fast path, in one run on one device.

Times whole steps of the real loop (`varicodec.train.loop.train_step` with the loop's
optimisers, fed by the loop's own batch source), so data loading counts. Settings,
each on the same model:

* ``old``: the loop as it was: folder loader (JPEG decode + resize on CPU workers),
  float32/TF32, λ moved to the device by the loop (the model's range check then
  syncs), per-tensor Adam;
* ``memory``: the training set decoded once into device memory, crops cut there;
  λ stays on the host (no sync), fused Adam on CUDA;
* ``memory+bf16``: plus bf16 autocast on the transforms (entropy models float32);
* ``memory+bf16+cl``: plus channels_last;
* ``memory+cl``, ``memory+cl+compile``: float32 with channels_last, then ``torch.compile``
  of the transforms; ``+b64`` / ``+b128``: the same at batch 64 / 128.

Every setting but ``+b64`` / ``+b128`` runs at ``--batch`` (default: the recipe's batch)
and without compile, whatever the recipe says, so that ``old`` is the loop as it was
(the GPU recipes run batch 64 + compile since window 4: pass ``--batch 32`` there).

Each setting runs ``--warmup`` steps (cudnn autotuning, worker start-up), then is
timed for ``--seconds`` of steady state: one setting after the other, or with
``--rounds R`` all of them built first and timed in R interleaved turns (A B, B A, …), which
is what a shared or drifting machine needs (on 2 CPU cores the setting timed second came
out 7–12 % ahead, whichever it was). Reports steps/s, crops/s and the ratio of
crops/s against the first setting listed (``old`` by default); crops/s, not steps/s,
so that settings with another batch size compare fairly.

    python benchmarks/train_loop_speed.py --config configs/gpu/hyperprior-bm.yaml \
        --out docs/results/train_loop_speed-gpu.json
    python benchmarks/train_loop_speed.py --config configs/hyperprior-bm-cpu.yaml \
        --seconds 20 --warmup 2 --out docs/results/train_loop_speed-cpu.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time

import torch

from varicodec import RateDistortionLoss
from varicodec.train import load_config
from varicodec.train.loop import (
    apply_speedups,
    build_model,
    make_batches,
    make_optimizers,
    sample_lmbda,
    train_step,
)

_DENSE = dict(compile=False)   # compile only where a setting names it (the GPU recipes have it on)
SETTINGS = {
    "old": dict(_DENSE, data_in_memory=False, amp=None, channels_last=False, fast=False),
    "memory": dict(_DENSE, data_in_memory=True, amp=None, channels_last=False, fast=True),
    "memory+bf16": dict(_DENSE, data_in_memory=True, amp="bf16", channels_last=False, fast=True),
    "memory+bf16+cl": dict(_DENSE, data_in_memory=True, amp="bf16", channels_last=True, fast=True),
    "memory+bf16-inner+cl": dict(_DENSE, data_in_memory=True, amp="bf16-inner", channels_last=True,
                                 fast=True),
    "memory+cl": dict(_DENSE, data_in_memory=True, amp=None, channels_last=True, fast=True),
    "memory+cl+compile": dict(_DENSE, data_in_memory=True, amp=None, channels_last=True,
                              compile=True, fast=True),
    "memory+cl+compile+b64": dict(data_in_memory=True, amp=None, channels_last=True,
                                  compile=True, batch_size=64, fast=True),
    "memory+cl+compile+b128": dict(data_in_memory=True, amp=None, channels_last=True,
                                   compile=True, batch_size=128, fast=True),
}
DEFAULT_SETTINGS = "old,memory,memory+bf16,memory+bf16+cl"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Setting:
    """One setting's model, optimisers and batch source, warmed up and ready to time."""

    def __init__(self, cfg, setting: dict, device: torch.device, warmup: int):
        self.fast = setting["fast"]
        self.cfg = cfg = dataclasses.replace(cfg, **{k: v for k, v in setting.items()
                                                     if k != "fast"})
        self.device = device
        torch.manual_seed(0)
        self.model = build_model(cfg).to(device).train()
        apply_speedups(self.model, cfg)
        self.opt, self.aux_opt = make_optimizers(self.model, cfg,
                                                 fused=self.fast and device.type == "cuda")
        self.crit = RateDistortionLoss(cfg.gamma, cfg.regularizer, cfg.alpha_target,
                                       cfg.sparsity_target)
        self.batches = make_batches(cfg, device, 0, 0, verbose=False)
        for _ in range(warmup):
            self.step()

    def step(self) -> None:
        x = next(self.batches)
        lm = sample_lmbda(self.cfg, self.model, x.shape[0])
        if not self.fast:
            lm = lm.to(self.device)   # as the old loop did
        train_step(self.model, self.model, self.crit, self.opt, self.aux_opt, x, lm,
                   self.cfg.clip_grad)

    def time(self, seconds: float, settle: int = 0) -> tuple[int, float]:
        """Steps done in ``seconds`` of steady state, and the exact time they took. The
        ``settle`` steps before the clock starts use up what a folder loader's workers
        prefetched while another setting had the machine."""
        for _ in range(settle):
            self.step()
        _sync(self.device)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.step()
            n += 1
            if self.device.type == "cuda" and n % 10 == 0:
                _sync(self.device)     # keep the host from queueing far ahead of the clock
        _sync(self.device)
        return n, time.perf_counter() - t0

    def close(self) -> None:
        self.batches.close()


def _rates(cfg, n: int, dt: float) -> dict:
    return {"steps": n, "seconds": dt, "steps_per_s": n / dt,
            "crops_per_s": n * cfg.batch_size / dt}


def measure(cfg, setting: dict, device: torch.device, warmup: int, seconds: float) -> dict:
    """One setting alone: warm up, then time ``seconds`` of steady state."""
    timed = _Setting(cfg, setting, device, warmup)
    try:
        n, dt = timed.time(seconds)
    finally:
        timed.close()
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    return {**_rates(timed.cfg, n, dt), "peak_gpu_gib": peak}


def measure_interleaved(cfg, names: list[str], device: torch.device, warmup: int,
                        seconds: float, rounds: int) -> dict[str, dict]:
    """Every setting built and warmed up first, then timed in ``rounds`` turns of
    ``seconds / rounds`` each, the order reversed every other round (A B, B A, …), so that a
    drift of the machine (another job, the clock, the caches) falls on all settings alike.
    A folder loader's workers keep prefetching while the other settings run: each turn
    starts with ``2 × workers`` untimed steps that use up that queue."""
    timed = {name: _Setting(cfg, SETTINGS[name], device, warmup) for name in names}
    settle = 2 * cfg.workers
    totals = {name: [0, 0.0, []] for name in names}
    try:
        for r in range(rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                n, dt = timed[name].time(seconds / rounds, settle)
                totals[name][0] += n
                totals[name][1] += dt
                totals[name][2].append(n / dt)
    finally:
        for t in timed.values():
            t.close()
    return {name: {**_rates(timed[name].cfg, n, dt), "peak_gpu_gib": None,
                   "steps_per_s_per_round": per_round}
            for name, (n, dt, per_round) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True, help="training recipe (model, batch, crop, data)")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS,
                    help=f"comma-separated subset of {list(SETTINGS)}")
    ap.add_argument("--warmup", type=int, default=25)
    ap.add_argument("--seconds", type=float, default=8.0, help="timed steady state per setting")
    ap.add_argument("--rounds", type=int, default=1,
                    help="time the settings in this many interleaved turns (A B, B A, ...), all "
                         "of them built first; 1: one after the other, each freed before the next")
    ap.add_argument("--batch", type=int,
                    help="batch of the settings that do not name one (default: the recipe's)")
    ap.add_argument("--workers", type=int, help="loader workers of the old path")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--out", help="write the results as JSON here")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        print("train_loop_speed: --rounds must be at least 1", file=sys.stderr)
        return 2
    cfg = load_config(a.config, workers=a.workers, threads=a.threads)
    if a.batch:
        cfg = dataclasses.replace(cfg, batch_size=a.batch)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    names = [s for s in a.settings.split(",") if s]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        print(f"train_loop_speed: unknown settings {unknown}; choose from {list(SETTINGS)}",
              file=sys.stderr)
        return 2
    if a.rounds > 1:
        results = measure_interleaved(cfg, names, device, a.warmup, a.seconds, a.rounds)
    else:
        results = {}
        for name in names:
            try:
                results[name] = measure(cfg, SETTINGS[name], device, a.warmup, a.seconds)
            except Exception as e:  # a setting that fails on this device is reported, not fatal
                results[name] = {"error": f"{type(e).__name__}: {e}"}
    for name, r in results.items():
        print(f"{name:<16} " + (f"{r['steps_per_s']:8.2f} steps/s {r['crops_per_s']:9.1f} crops/s"
                                if "error" not in r else r["error"]), flush=True)
    baseline = names[0]   # ratios against the first setting measured (default: old)
    base = results[baseline].get("crops_per_s")
    for r in results.values():
        if base and "crops_per_s" in r:
            r[f"crops_per_s_vs_{baseline}"] = r["crops_per_s"] / base
    device_name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"{platform.processor() or platform.machine()} CPU, "
                        f"{torch.get_num_threads()} threads")
    out = {
        "command": "python benchmarks/train_loop_speed.py "
                   + " ".join(sys.argv[1:] if argv is None else argv),
        "device": device_name, "torch": torch.__version__,
        "model": cfg.model, "N": cfg.N, "M": cfg.M, "batch": cfg.batch_size, "crop": cfg.crop,
        "workers_old_path": cfg.workers, "warmup_steps": a.warmup, "rounds": a.rounds,
        "results": results,
    }
    print(json.dumps({k: v.get(f"crops_per_s_vs_{baseline}") for k, v in results.items()}))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
