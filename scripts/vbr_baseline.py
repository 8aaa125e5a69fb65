#!/usr/bin/env python3
"""CompressAI's own variable-rate model, trained with our budget: the baseline the
measurement protocol names (../shared/SPEC.md, "RD comparisons", (b)).

CompressAI 1.2.8 ships ``ScaleHyperpriorVbr`` (Kamisli, Racapé, Choi, "Variable-Rate
Learned Image Compression with Multi-Objective Optimization and Quantization-Reconstruction
Offsets", DCC 2024): the ScaleHyperprior transforms, one quantisation gain per CompressAI
λ (eight levels) and a small network that predicts a reconstruction offset from each
latent's scale and the gain. Its docstring gives two training stages: stage 1 is the plain
model (no variable-rate path), stage 2 the variable-rate path with one level per batch.
This script trains it through ``varicodec train``'s batch pipeline (the same crop, scale,
batch size and seed) with the same optimiser, learning rate, decays and clipping as one
of our recipes, and evaluates it like a classical codec
(``varicodec eval``'s runner: real bytes, PSNR on 8-bit RGB), one point per level::

    python scripts/vbr_baseline.py train configs/baselines/vbr-hyperprior-cpu.yaml [--resume]
    python scripts/vbr_baseline.py eval runs/vbr-hyperprior-cpu ../shared/data/kodak \\
        -o docs/results/baselines/vbr-hyperprior-cpu.json
    varicodec table docs/results/hyperprior-bm-cpu.json \\
        docs/results/baselines/vbr-hyperprior-cpu.json

Recipe keys (YAML): ``name N M steps lr aux_lr lr_decay_at lr_decay clip_grad crop scale
batch_size workers seed threads stage1_fraction train_dir checkpoint_minutes out_dir``;
``stage1_fraction`` of the steps run stage 1 at the highest λ (the level whose gain is 1),
the rest stage 2 at a uniformly drawn level per step.

The file format of ``eval``'s streams is this script's own (a 13-byte header: height,
width, level, the two stream lengths; then CompressAI's two rANS strings); their bytes are
what the rate counts.
"""

from __future__ import annotations

import argparse
import math
import random
import signal
import struct
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from varicodec.errors import VaricodecError

DEFAULTS = {
    "N": 128, "M": 192, "steps": 4000, "lr": 2.0e-4, "aux_lr": 1.0e-3,
    "lr_decay_at": [0.85, 0.95], "lr_decay": 0.1, "clip_grad": 1.0, "crop": 128,
    "scale": [0.5, 1.0], "batch_size": 8, "workers": 1, "seed": 0, "threads": 2,
    "stage1_fraction": 0.5, "train_dir": "../shared/data/train", "checkpoint_minutes": 5.0,
    "out_dir": "runs",
}
HEADER = struct.Struct("<HHBII")  # height, width, level, len(y string), len(z string)
LOG_EVERY = 50


def load_recipe(path: str | Path) -> SimpleNamespace:
    """The recipe at ``path`` over :data:`DEFAULTS`; unknown keys are an error."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(data) - set(DEFAULTS) - {"name"})
    if unknown:
        raise VaricodecError(f"{path}: unknown key(s) {', '.join(unknown)}")
    if "name" not in data:
        raise VaricodecError(f"{path}: the recipe needs a name")
    cfg = {**DEFAULTS, **data}
    if not 0.0 <= float(cfg["stage1_fraction"]) <= 1.0:
        raise VaricodecError(f"{path}: stage1_fraction must be in [0, 1]")
    # the fields varicodec.train.loop.make_batches reads
    cfg.update(channels_last=False, data_in_memory=False)
    return SimpleNamespace(**cfg)


def build(N: int, M: int):
    from compressai.models.vbr import ScaleHyperpriorVbr
    return ScaleHyperpriorVbr(N, M)


def rd_loss(net, x: torch.Tensor, stage: int, level: int) -> dict[str, torch.Tensor]:
    """``bpp + λ_level·255²·MSE`` of one batch (the likelihoods' rate, as in training)."""
    from varicodec.losses import bpp_from_likelihoods

    out = net(x, stage=stage, s=level)
    bpp = bpp_from_likelihoods(out["likelihoods"], x.shape[-2] * x.shape[-1]).mean()
    mse = F.mse_loss(out["x_hat"], x)
    lmbda = net.lmbda[level]
    return {"loss": bpp + lmbda * 255**2 * mse, "bpp": bpp.detach(),
            "psnr_db": (-10 * torch.log10(mse.detach().clamp_min(1e-10)))}


def train(recipe: str | Path, resume: bool = False, max_minutes: float | None = None,
          stop_at: int | None = None) -> Path:
    """Train (or continue) the recipe's run, until its last step, ``stop_at`` or
    ``max_minutes`` (a checkpoint either way); returns the run folder."""
    from varicodec.progress import progress_bar
    from varicodec.train.checkpoint import load_checkpoint, restore_state, save_checkpoint
    from varicodec.train.loop import make_batches, step_decay

    cfg = load_recipe(recipe)
    torch.set_num_threads(int(cfg.threads))
    run = Path(cfg.out_dir) / cfg.name
    ckpt = run / "checkpoint.safetensors"
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    net = build(cfg.N, cfg.M)
    main = [p for n, p in net.named_parameters() if not n.endswith(".quantiles")]
    aux = [p for n, p in net.named_parameters() if n.endswith(".quantiles")]
    opt = torch.optim.Adam(main, lr=cfg.lr)
    aux_opt = torch.optim.Adam(aux, lr=cfg.aux_lr)
    step = 0
    if resume and ckpt.exists():
        model_sd, tensors, meta = load_checkpoint(ckpt)
        net.load_state_dict(model_sd)
        restore_state(tensors, meta, {"main": opt, "aux": aux_opt})
        step = int(meta["step"])
        print(f"resumed {run} at step {step}", file=sys.stderr)
    elif ckpt.exists():
        raise VaricodecError(f"{ckpt} exists: pass --resume to continue it")
    levels = torch.Generator().manual_seed(cfg.seed * 1000 + 17)
    for _ in range(step):  # the same level draws after a resume
        torch.randint(net.levels, (1,), generator=levels)
    stage1_steps = round(cfg.stage1_fraction * cfg.steps)
    batches = make_batches(cfg, torch.device("cpu"), 0, step, verbose=True)
    net.train()
    t_start = last_save = time.monotonic()
    bar = progress_bar(cfg.steps, cfg.name, "step")
    bar.update(step)

    def save() -> None:
        save_checkpoint(ckpt, net, {"main": opt, "aux": aux_opt}, step,
                        {"recipe": vars(cfg), "model": "compressai.models.vbr.ScaleHyperpriorVbr"})

    last = min(cfg.steps, stop_at or cfg.steps)
    interrupted = []

    def on_signal(signum, frame):  # finish the step, checkpoint, exit
        interrupted.append(signum)

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in previous:
        signal.signal(s, on_signal)
    try:
        while step < last and not interrupted:
            stage = 1 if step < stage1_steps else 2
            drawn = int(torch.randint(net.levels, (1,), generator=levels))
            level = net.levels - 1 if stage == 1 else drawn
            factor = step_decay(step / cfg.steps, cfg.lr_decay_at, cfg.lr_decay)
            for group in opt.param_groups:
                group["lr"] = cfg.lr * factor
            losses = rd_loss(net, next(batches), stage, level)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(main, cfg.clip_grad)
            opt.step()
            aux_loss = net.aux_loss()
            aux_opt.zero_grad(set_to_none=True)
            aux_loss.backward()
            aux_opt.step()
            step += 1
            bar.update(1)
            if step % LOG_EVERY == 0:
                bar.set_postfix(stage=stage, level=level, bpp=f"{float(losses['bpp']):.3f}",
                                psnr=f"{float(losses['psnr_db']):.2f}")
            if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes:
                save()
                last_save = time.monotonic()
            if max_minutes and time.monotonic() - t_start > 60 * max_minutes:
                break
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    save()
    bar.close()
    if interrupted:
        print(f"interrupted: checkpoint at step {step} in {ckpt}", file=sys.stderr)
        raise SystemExit(130)
    print(f"{run}: step {step}/{cfg.steps}", file=sys.stderr)
    return run


def load_run(run: str | Path):
    """The trained network of a run folder, entropy coders ready; and the checkpoint's metadata."""
    from varicodec.train.checkpoint import load_checkpoint

    ckpt = Path(run) / "checkpoint.safetensors"
    if not ckpt.exists():
        raise VaricodecError(f"{run}: no checkpoint.safetensors (train it first)")
    model_sd, _, meta = load_checkpoint(ckpt)
    net = build(meta["recipe"]["N"], meta["recipe"]["M"])
    net.load_state_dict(model_sd)
    net.update(force=True)
    return net.eval(), meta


def make_codec(net, meta: dict):
    """The network as a :class:`varicodec.eval.classical.ClassicalCodec` swept over its levels."""
    import compressai

    from varicodec.eval.classical import ClassicalCodec
    from varicodec.imageio import pad_to_multiple, to_tensor, to_uint8

    def encode(rgb: np.ndarray, level: float) -> bytes:
        h, w = rgb.shape[:2]
        x = pad_to_multiple(to_tensor(rgb), 64)
        with torch.no_grad():
            out = net.compress(x, stage=2, s=int(level))
        (y,), (z,) = out["strings"]
        return HEADER.pack(h, w, int(level), len(y), len(z)) + y + z

    def decode(data: bytes) -> np.ndarray:
        h, w, level, ny, nz = HEADER.unpack_from(data)
        y = data[HEADER.size:HEADER.size + ny]
        z = data[HEADER.size + ny:HEADER.size + ny + nz]
        shape = (math.ceil(h / 64), math.ceil(w / 64))
        with torch.no_grad():
            x = net.decompress([[y], [z]], shape, stage=2, s=level)["x_hat"]
        return np.ascontiguousarray(to_uint8(x[..., :h, :w]))

    recipe = meta["recipe"]
    return ClassicalCodec(
        name="compressai-vbr",
        description="CompressAI's ScaleHyperpriorVbr, trained by scripts/vbr_baseline.py",
        setting="level", sweep=tuple(range(net.levels)),
        options={"run": recipe["name"], "steps": meta["step"], "N": recipe["N"],
                 "M": recipe["M"], "stage1_fraction": recipe["stage1_fraction"],
                 "gains": [round(float(g), 5) for g in net.Gain.detach().abs()]},
        encode=encode, decode=decode, check=lambda: None,
        library=lambda: f"compressai {compressai.__version__}")


def evaluate(run: str, dataset: str, out: str, limit: int | None = None,
             threads: int = 1, label: str | None = None) -> dict:
    from varicodec.eval.results import save_results
    from varicodec.eval.runner import evaluate_codec, list_images

    torch.set_num_threads(threads)
    net, meta = load_run(run)
    images = list_images(dataset, limit)
    results = evaluate_codec(make_codec(net, meta), images, dataset_dir=dataset, limit=limit,
                             label=label or f"CompressAI VBR ({meta['recipe']['name']})")
    for point in results["points"]:
        point["lmbda"] = net.lmbda[point["setting"]["level"]]
    save_results(results, out)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train (or --resume) a recipe")
    t.add_argument("recipe")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--max-minutes", type=float, default=None)
    t.add_argument("--stop-at", type=int, default=None, metavar="STEP",
                   help="stop (with a checkpoint) at this step; --resume continues")
    e = sub.add_parser("eval", help="evaluate a trained run on a folder of images")
    e.add_argument("run")
    e.add_argument("dataset")
    e.add_argument("-o", "--out", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--label", default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "train":
            train(args.recipe, args.resume, args.max_minutes, args.stop_at)
        else:
            r = evaluate(args.run, args.dataset, args.out, args.limit, args.threads, args.label)
            for point in r["points"]:
                print(f"level {point['setting']['level']}: {point['bpp']:.4f} bpp "
                      f"{point['psnr_db']:.2f} dB")
    except (VaricodecError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
