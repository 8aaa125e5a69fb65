"""The training loop behind ``varicodec train``.

One process, or several under ``torchrun`` (DistributedDataParallel; gloo on
CPU, NCCL on GPU). Rank 0 logs, validates and writes checkpoints.
"""

from __future__ import annotations

import csv
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import VaricodecError
from ..imageio import load_rgb, to_tensor
from ..losses import RateDistortionLoss, bpp_from_likelihoods
from ..models import VaricodecModel, create_model, parse_name, read_card
from ..models.io import model_from_state
from .checkpoint import load_checkpoint, restore_state, save_checkpoint
from .config import TrainConfig
from .data import RandomCropFolder, ResumableSampler, list_images
from .memdata import InMemoryCrops

__all__ = ["train", "train_step", "build_model", "git_commit", "load_init_weights",
           "make_batches", "make_optimizers", "apply_speedups"]

CHECKPOINT = "checkpoint.safetensors"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(cfg: TrainConfig) -> VaricodecModel:
    return create_model(cfg.model, N=cfg.N, M=cfg.M, lmbda=cfg.lmbda,
                        lmbda_range=tuple(cfg.lmbda_range), lmbda_ref=cfg.lmbda_ref,
                        gate=cfg.gate)


def load_init_weights(model: VaricodecModel, path: str | Path) -> list[str]:
    """Start from another model's weights (staged schedule: base → ecg, base → bm, bm → ecgbm).

    ``path`` is an exported ``.safetensors`` model or a run folder / checkpoint.
    Returns the names of parameters that kept their fresh initialisation.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--init: no such weights or run: {path}")
    try:
        config, _ = read_card(path)
        from safetensors.torch import load_file

        state = load_file(str(path))
    except ValueError:
        state, _, meta = load_checkpoint(path)
        recipe = meta.get("recipe", {})
        arch, variant = parse_name(recipe.get("model", "hyperprior-base"))
        config = dict(recipe, arch=arch, variant=variant)
    if not model.variable_rate and any(k.startswith("modulator.") for k in state):
        state = _folded_state(state, config, model.lmbda)
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) for k, v in state.items()
             if k in own and own[k].is_floating_point() or k in own}
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"--init {path}: weights do not fit {model.name}: "
                         f"{result.unexpected_keys[:5]}")
    return list(result.missing_keys)


def _folded_state(state: dict, config: dict, lmbda: float) -> dict:
    """A variable-rate model's weights with its modulator folded in at ``lmbda``."""
    from ..models.fold import fold_bitrate_modulator

    keys = ("arch", "variant", "N", "M", "lmbda_range", "lmbda_ref", "gate", "bm_hidden")
    source = model_from_state({k: config[k] for k in keys if config.get(k) is not None}, state)
    return fold_bitrate_modulator(source, lmbda).state_dict()


def _param_groups(model: VaricodecModel, cfg: TrainConfig) -> tuple[list[dict], list]:
    gate, modulator, main, aux = [], [], [], []
    for n, p in model.named_parameters():
        if n.endswith(".quantiles"):
            aux.append(p)
        elif ".gate." in n:
            gate.append(p)
        elif n.startswith(("modulator.", "demodulator.")):
            modulator.append(p)
        else:
            main.append(p)
    groups = [{"params": main, "lr": cfg.lr, "base_lr": cfg.lr}]
    if gate:
        groups.append({"params": gate, "lr": cfg.gate_lr, "base_lr": cfg.gate_lr})
    if modulator:
        groups.append({"params": modulator, "lr": cfg.modulator_lr, "base_lr": cfg.modulator_lr})
    return groups, aux


def make_optimizers(model: VaricodecModel, cfg: TrainConfig, fused: bool = False):
    """Adam over the parameter groups (main, gates, modulators) and Adam for the
    entropy bottleneck's quantiles. ``fused``: one kernel per step (CUDA)."""
    groups, aux_params = _param_groups(model, cfg)
    return (torch.optim.Adam(groups, fused=fused),
            torch.optim.Adam(aux_params, lr=cfg.aux_lr, fused=fused))


def _progress(cfg: TrainConfig, step: int, seconds: float) -> float:
    """How far the run is, in [0, 1]: by steps, or by training time under a time budget."""
    done = step / cfg.steps
    if cfg.time_budget_minutes:
        done = max(done, seconds / (60 * cfg.time_budget_minutes))
    return done


def apply_speedups(model: VaricodecModel, cfg: TrainConfig) -> None:
    """The recipe's ``channels_last``, ``amp`` and ``compile`` on ``model``."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    model.set_autocast(torch.bfloat16 if cfg.amp else None, compile=cfg.compile,
                       fp32_output_layers=cfg.amp == "bf16-inner")


def train_step(net, model: VaricodecModel, criterion: RateDistortionLoss, opt, aux_opt,
               x: torch.Tensor, lmbda: torch.Tensor, clip_grad: float = 0.0):
    """One optimisation step: R-D loss, backward, clip, Adam; then the auxiliary step.

    Returns ``(losses, aux_loss)`` as tensors (reading them syncs the device).
    """
    out = net(x, lmbda=lmbda)
    losses = criterion(out, x, model)
    opt.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if clip_grad:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    opt.step()
    aux = model.aux_loss()
    aux_opt.zero_grad(set_to_none=True)
    aux.backward()
    aux_opt.step()
    return losses, aux


def _lr_factor(cfg: TrainConfig, step: int, seconds: float = 0.0) -> float:
    p = _progress(cfg, step, seconds)
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    return warm * cfg.lr_decay ** sum(p >= f for f in cfg.lr_decay_at)


def sample_lmbda(cfg: TrainConfig, model: VaricodecModel, batch: int) -> torch.Tensor:
    """λ per example: fixed for base/ecg, log-uniform over the range (or from the set) otherwise."""
    if not model.variable_rate:
        return torch.full((batch,), cfg.lmbda)
    if cfg.lmbdas:
        idx = torch.randint(len(cfg.lmbdas), (batch,))
        return torch.tensor(cfg.lmbdas, dtype=torch.float32)[idx]
    lo, hi = math.log(cfg.lmbda_range[0]), math.log(cfg.lmbda_range[1])
    return torch.exp(lo + (hi - lo) * torch.rand(batch))


def _center_crops(folder: str, count: int, size: int) -> list[torch.Tensor]:
    """Centre crops (multiples of 64 px) of the first ``count`` usable images."""
    crops = []
    for p in list_images(folder):
        if len(crops) == count:
            break
        try:
            x = to_tensor(load_rgb(p))
        except (VaricodecError, OSError, ValueError) as e:
            print(f"validation: skipping {p.name} ({e})", file=sys.stderr)
            continue
        h, w = x.shape[-2:]
        s = min(size, h - h % 64, w - w % 64)
        if s < 64:
            continue
        t, left = (h - s) // 2, (w - s) // 2
        crops.append(x[:, :, t:t + s, left:left + s])
    return crops


@torch.no_grad()
def validate(model: VaricodecModel, cfg: TrainConfig, images: list[torch.Tensor],
             device: torch.device) -> dict:
    """Estimated and real bpp, PSNR, R-D loss and per-layer sparsity at a few λ,
    in full precision whatever the training speed-ups."""
    if model.variable_rate:
        lo, hi = cfg.lmbda_range
        points = [lo, math.sqrt(lo * hi), hi]
    else:
        points = [cfg.lmbda]
    was_training = model.training
    model.eval()
    result: dict = {"points": []}
    with model.full_precision():
        model.update(force=True)
        for lm in points:
            est, mse, real, layers = [], [], [], {}
            for i, x in enumerate(images):
                x = x.to(device)
                out = model(x, lmbda=lm if model.variable_rate else None)
                n = x.shape[-2] * x.shape[-1]
                est.append(float(bpp_from_likelihoods(out["likelihoods"], n).mean()))
                mse.append(max(float((out["x_hat"].clamp(0, 1) - x).pow(2).mean()), 1e-10))
                for k, s in model.sparsity().items():
                    layers.setdefault(k, []).append(s)
                if i < cfg.val_real_images:
                    c = model.compress(x, lmbda=lm if model.variable_rate else None)
                    real.append(sum(len(s[0]) for s in c["strings"]) * 8 / n)
            sp = {k: float(np.mean(v)) for k, v in layers.items()}
            result["points"].append({
                "lmbda": lm, "bpp_est": float(np.mean(est)),
                "psnr_db": float(np.mean([-10 * math.log10(e) for e in mse])),
                "rd_loss": float(np.mean(est) + lm * 255**2 * np.mean(mse)),
                "bpp_real": float(np.mean(real)) if real else None,
                "sparsity": float(np.mean(list(sp.values()))) if sp else 0.0,
                "sparsity_per_layer": sp,
            })
    model.train(was_training)
    return result


def _fmt_val(v: dict) -> str:
    return "; ".join(
        f"λ={p['lmbda']:.4g}: {p['bpp_est']:.3f} bpp est / "
        f"{p['bpp_real'] if p['bpp_real'] is None else round(p['bpp_real'], 3)} real, "
        f"{p['psnr_db']:.2f} dB, sparsity {p['sparsity']:.2f}" for p in v["points"])


def train(cfg: TrainConfig, resume: bool = False, init: str | None = None,
          max_minutes: float | None = None) -> Path:
    """Run (or continue) the recipe ``cfg``; returns the run folder."""
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
                          if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    main_proc = rank == 0
    run_dir = cfg.run_dir()
    ckpt_path = run_dir / CHECKPOINT
    if main_proc:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists() and not resume:
            raise FileExistsError(f"{run_dir} already holds a run: pass --resume to continue it "
                                  "or choose another name")
    random.seed(cfg.seed + rank)
    np.random.seed(cfg.seed + rank)
    torch.manual_seed(cfg.seed + rank)

    model = build_model(cfg).to(device)
    init = init or cfg.init
    cfg.init = init  # recorded in the checkpoint's recipe: the model card's lineage follows it
    fresh: list[str] = []
    if init and not (resume and ckpt_path.exists()):
        fresh = load_init_weights(model, init)
        if main_proc:
            print(f"initialised from {init} ({len(fresh)} tensors kept fresh: gates/modulators)",
                  file=sys.stderr)
    opt, aux_opt = make_optimizers(model, cfg, fused=device.type == "cuda")
    optimizers = {"main": opt, "aux": aux_opt}
    step, history, seconds = 0, [], 0.0
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}")
        sd, tensors, meta = load_checkpoint(ckpt_path)
        model.load_state_dict(sd)
        restore_state(tensors, meta, optimizers)
        if rank:
            random.seed(cfg.seed + rank + meta["step"])
            torch.manual_seed(cfg.seed + rank + meta["step"])
        step, history = meta["step"], meta.get("history", [])
        seconds = float(meta.get("train_seconds", 0.0))
        if main_proc:
            print(f"resumed {run_dir} at step {step}", file=sys.stderr)

    apply_speedups(model, cfg)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    criterion = RateDistortionLoss(cfg.gamma, cfg.regularizer, cfg.alpha_target,
                                   cfg.sparsity_target)
    batches = make_batches(cfg, device, rank, step, main_proc)
    val_images = _center_crops(cfg.val_dir, cfg.val_images, cfg.val_crop) if main_proc else []

    stop = {"flag": False}

    def _on_signal(signum, frame):  # finish the step, checkpoint, exit
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    def checkpoint() -> None:
        if main_proc:
            save_checkpoint(ckpt_path, model, optimizers, step,
                            {"recipe": cfg.to_dict(), "history": history,
                             "git_commit": git_commit(), "train_seconds": seconds})

    log_path = run_dir / "log.csv"
    log_fields = ["step", "time_s", "loss", "bpp", "psnr_db", "sparsity", "reg", "aux", "lr"]
    if main_proc and not log_path.exists():
        with log_path.open("w", newline="") as f:
            csv.writer(f).writerow(log_fields)
    bar = _progress_bar(cfg, step, main_proc)
    t_start = time.time()
    last_ckpt = time.time()
    model.train()
    t_step = time.time()
    while step < cfg.steps and not stop["flag"]:
        x = next(batches)
        factor = _lr_factor(cfg, step, seconds)
        for grp in opt.param_groups:
            grp["lr"] = grp["base_lr"] * factor
        if cfg.gamma_warmup_steps:
            criterion.gamma = cfg.gamma * min(1.0, step / cfg.gamma_warmup_steps)
        lm = sample_lmbda(cfg, model, x.shape[0])  # on the host: the model moves it, no sync
        losses, aux = train_step(net, model, criterion, opt, aux_opt, x, lm, cfg.clip_grad)
        step += 1
        now = time.time()
        seconds += now - t_step
        t_step = now
        if main_proc:
            bar.update(1)
            if step % cfg.log_every == 0 or step == 1:
                row = [step, round(time.time() - t_start, 2)] + [
                    round(losses[k].item(), 5) for k in ("loss", "bpp", "psnr_db", "sparsity",
                                                         "reg")] + [round(aux.item(), 3),
                                                                    opt.param_groups[0]["lr"]]
                with log_path.open("a", newline="") as f:
                    csv.writer(f).writerow(row)
                bar.set_postfix(loss=f"{losses['loss'].item():.3f}",
                                bpp=f"{float(losses['bpp']):.3f}",
                                psnr=f"{float(losses['psnr_db']):.2f}",
                                sp=f"{float(losses['sparsity']):.2f}")
            if step % cfg.val_every == 0 or step == cfg.steps:
                v = validate(model, cfg, val_images, device)
                v["step"] = step
                history.append(v)
                bar.write(f"[val step {step}] {_fmt_val(v)}", file=sys.stderr)
                t_step = time.time()  # validation time is not training time
        if max_minutes and time.time() - t_start > 60 * max_minutes:
            stop["flag"] = True
        if cfg.time_budget_minutes and seconds >= 60 * cfg.time_budget_minutes:
            stop["flag"] = True
        if distributed:
            flag = torch.tensor([float(stop["flag"])], device=device)
            dist.all_reduce(flag)
            stop["flag"] = bool(flag.item())
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            checkpoint()
            last_ckpt = time.time()
    if main_proc and cfg.time_budget_minutes and (not history or history[-1]["step"] != step):
        v = validate(model, cfg, val_images, device)   # the budget ended the run: validate it
        v["step"] = step
        history.append(v)
        bar.write(f"[val step {step}] {_fmt_val(v)}", file=sys.stderr)
    checkpoint()
    bar.close()
    if main_proc:
        budget_spent = cfg.time_budget_minutes and seconds >= 60 * cfg.time_budget_minutes
        state = ("finished" if step >= cfg.steps or budget_spent
                 else "stopped (resume with --resume)")
        print(f"{cfg.name}: {state} at step {step}; checkpoint {ckpt_path}", file=sys.stderr)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir


def _progress_bar(cfg: TrainConfig, step: int, enabled: bool):
    """A tqdm bar on a terminal; in a log, a plain line every 30 s (steps, steps/s, loss…)."""
    if sys.stderr.isatty() or not enabled:
        return tqdm(total=cfg.steps, initial=step, disable=not enabled, dynamic_ncols=True,
                    desc=cfg.name, file=sys.stderr, mininterval=2.0)
    from .. import progress

    total = None if cfg.time_budget_minutes else cfg.steps
    return progress.LineProgress(total, cfg.name, "steps", interval=6 * progress.INTERVAL_S,
                                 initial=step)


def make_batches(cfg: TrainConfig, device: torch.device, rank: int, step: int, verbose: bool):
    """Endless training batches on ``device`` (channels-last if the recipe says so),
    continuing at ``step``."""
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    seed = cfg.seed * 1000 + rank * 7919
    if cfg.data_in_memory:
        crops = InMemoryCrops(cfg.train_dir, cfg.crop, tuple(cfg.scale), device, seed, verbose)
        while True:
            yield crops.batch(step, cfg.batch_size).contiguous(memory_format=fmt)
            step += 1
    data = RandomCropFolder(cfg.train_dir, cfg.crop, tuple(cfg.scale), verbose=verbose)
    sampler = ResumableSampler(len(data), seed=seed, start=step * cfg.batch_size)
    g = torch.Generator().manual_seed(seed + step)
    loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, drop_last=True,
                        num_workers=cfg.workers, generator=g,
                        persistent_workers=cfg.workers > 0, pin_memory=device.type == "cuda",
                        worker_init_fn=_seed_worker)
    for x in loader:
        yield x.to(device, non_blocking=True).contiguous(memory_format=fmt)


def _seed_worker(worker_id: int) -> None:
    # Ctrl-C / SIGTERM are for the main process, which checkpoints and then stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
