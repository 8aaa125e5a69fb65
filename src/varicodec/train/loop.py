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
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import VaricodecError
from ..imageio import load_rgb, to_tensor
from ..losses import RateDistortionLoss, bpp_from_likelihoods
from ..models import VaricodecModel, create_model
from .checkpoint import load_checkpoint, restore_state, save_checkpoint
from .config import TrainConfig
from .data import RandomCropFolder, ResumableSampler, list_images
from .distill import FeatureDistiller, dense_teacher
from .init import CHECKPOINT, load_init, load_init_weights
from .memdata import InMemoryCrops

__all__ = ["train", "train_step", "build_model", "git_commit", "load_init_weights",
           "make_batches", "make_optimizers", "apply_speedups", "step_decay"]


def git_commit() -> str:
    from ..util import git_commit as commit

    return commit(short=True) or "unknown"


def build_model(cfg: TrainConfig) -> VaricodecModel:
    return create_model(cfg.model, N=cfg.N, M=cfg.M, lmbda=cfg.lmbda,
                        lmbda_range=tuple(cfg.lmbda_range), lmbda_ref=cfg.lmbda_ref,
                        gate=cfg.gate)


def _param_groups(model: VaricodecModel, cfg: TrainConfig) -> tuple[list[dict], list]:
    """Adam's groups (main, gates, modulators) and the auxiliary parameters; the
    modules the recipe freezes (``frozen``) are left out and stop requiring gradients."""
    frozen = tuple(p for part in (cfg.frozen or ()) for p in (f"net.{part}.", f"{part}."))
    if frozen and not any(n.startswith(frozen) for n, _ in model.named_parameters()):
        raise ValueError(f"frozen: {cfg.frozen} names no module of {model.name}")
    gate, modulator, main, aux = [], [], [], []
    for n, p in model.named_parameters():
        if frozen and n.startswith(frozen):
            p.requires_grad_(False)
        elif n.endswith(".quantiles"):
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
               x: torch.Tensor, lmbda: torch.Tensor, clip_grad: float = 0.0,
               distiller: FeatureDistiller | None = None, distill: float = 0.0):
    """One optimisation step: R-D loss (plus ``distill`` × the distiller's layer-matching
    term, when given), backward, clip, Adam; then the auxiliary step.

    Returns ``(losses, aux_loss)`` as tensors (reading them syncs the device).
    """
    if distiller is not None:
        distiller.teacher_forward(x, lmbda)
    out = net(x, lmbda=lmbda)
    losses = criterion(out, x, model)
    if distiller is not None:
        term = distiller.loss()
        losses["loss"] = losses["loss"] + distill * term
        losses["distill"] = term.detach()
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


def step_decay(progress: float, decay_at: Sequence[float], decay: float) -> float:
    """The learning-rate factor of a step schedule: ×``decay`` at each fraction in ``decay_at``
    that ``progress`` (0–1, of the steps or of the time budget) has reached."""
    return decay ** sum(progress >= f for f in decay_at)


def _lr_factor(cfg: TrainConfig, step: int, seconds: float = 0.0) -> float:
    warm = min(1.0, (step + 1) / cfg.lr_warmup_steps) if cfg.lr_warmup_steps else 1.0
    return warm * step_decay(_progress(cfg, step, seconds), cfg.lr_decay_at, cfg.lr_decay)


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


@dataclass
class _Run:
    """One training process: what :func:`_setup` builds and the steps move on."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    distributed: bool
    run_dir: Path
    model: VaricodecModel
    net: torch.nn.Module                  # the model, or its DistributedDataParallel wrapper
    optimizers: dict                      # {"main": Adam, "aux": Adam}
    criterion: RateDistortionLoss
    batches: Iterator[torch.Tensor]
    val_images: list[torch.Tensor]
    step: int = 0
    history: list = field(default_factory=list)
    seconds: float = 0.0                  # training time (validation excluded)
    pretrained: dict | None = None        # CompressAI zoo source, carried to the model card
    stop: bool = False
    distiller: FeatureDistiller | None = None  # the recipe's ``distill``: a dense teacher

    @property
    def main_proc(self) -> bool:
        return self.rank == 0

    @property
    def ckpt_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    @property
    def log_path(self) -> Path:
        return self.run_dir / "log.csv"


def _init_process(cfg: TrainConfig) -> tuple[bool, int, torch.device]:
    """``(distributed, rank, device)``; process group, CUDA flags and threads set up."""
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
    return distributed, rank, device


def _setup(cfg: TrainConfig, resume: bool, init: str | None) -> _Run:
    """Everything before the first step: process, run folder, model (fresh, from
    ``init`` or resumed), optimisers, speed-ups, loss, data and validation crops."""
    distributed, rank, device = _init_process(cfg)
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
    pretrained = None
    if init and not (resume and ckpt_path.exists()):
        pretrained = _load_init(cfg, model, init, main_proc)
    opt, aux_opt = make_optimizers(model, cfg, fused=device.type == "cuda")
    optimizers = {"main": opt, "aux": aux_opt}
    step, history, seconds = 0, [], 0.0
    if resume:
        step, history, seconds, pretrained = _resume(cfg, run_dir, model, optimizers, rank)

    apply_speedups(model, cfg)
    distiller = _distiller(cfg, model, main_proc)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    criterion = RateDistortionLoss(cfg.gamma, cfg.regularizer, cfg.alpha_target,
                                   cfg.sparsity_target)
    batches = make_batches(cfg, device, rank, step, main_proc)
    val_images = _center_crops(cfg.val_dir, cfg.val_images, cfg.val_crop) if main_proc else []
    return _Run(cfg, device, rank, distributed, run_dir, model, net, optimizers, criterion,
                batches, val_images, step, history, seconds, pretrained, distiller=distiller)


def _distiller(cfg: TrainConfig, model: VaricodecModel, main_proc: bool) -> FeatureDistiller | None:
    """The recipe's layer-by-layer teacher (``distill`` > 0): the dense model of ``teacher``,
    by default the weights the run started from (``init``)."""
    if not cfg.distill:
        return None
    spec = cfg.teacher or cfg.init
    if not spec:
        raise ValueError("distill needs a teacher: set `teacher:` (or `init:`) in the recipe")
    teacher = dense_teacher(model, spec)
    apply_speedups(teacher, cfg)
    if main_proc:
        print(f"distilling from {spec} ({teacher.name}), β = {cfg.distill:g}", file=sys.stderr)
    return FeatureDistiller(model, teacher)


def _load_init(cfg: TrainConfig, model: VaricodecModel, init: str, main_proc: bool) -> dict | None:
    """Starting weights from ``init``; returns the CompressAI zoo source they carry, if any."""
    result = load_init(model, init, progress=main_proc, parts=cfg.init_parts)
    if result.lmbda_ref is not None:
        cfg.lmbda_ref = result.lmbda_ref  # the recipe records where the modulators start
    if main_proc:
        for line in [result.describe(), *result.notes]:
            print(line, file=sys.stderr)
    return result.pretrained


def _resume(cfg: TrainConfig, run_dir: Path, model: VaricodecModel, optimizers: dict,
            rank: int) -> tuple[int, list, float, dict | None]:
    """Model, optimisers and RNGs from the run's checkpoint: ``(step, history,
    training seconds, zoo source)``."""
    ckpt_path = run_dir / CHECKPOINT
    if not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir}")
    sd, tensors, meta = load_checkpoint(ckpt_path)
    model.load_state_dict(sd)
    restore_state(tensors, meta, optimizers)
    if not cfg.init:  # resumed without --init: the run still started from the same weights
        cfg.init = meta.get("recipe", {}).get("init")
    if rank:
        random.seed(cfg.seed + rank + meta["step"])
        torch.manual_seed(cfg.seed + rank + meta["step"])
    if rank == 0:
        print(f"resumed {run_dir} at step {meta['step']}", file=sys.stderr)
    return (meta["step"], meta.get("history", []), float(meta.get("train_seconds", 0.0)),
            meta.get("pretrained"))


def _step(run: _Run) -> tuple[dict, torch.Tensor]:
    """One training step with the schedules (lr, γ warm-up) at the current step."""
    cfg, opt = run.cfg, run.optimizers["main"]
    x = next(run.batches)
    factor = _lr_factor(cfg, run.step, run.seconds)
    for grp in opt.param_groups:
        grp["lr"] = grp["base_lr"] * factor
    if cfg.gamma_warmup_steps:
        run.criterion.gamma = cfg.gamma * min(1.0, run.step / cfg.gamma_warmup_steps)
    lm = sample_lmbda(cfg, run.model, x.shape[0])  # on the host: the model moves it, no sync
    losses, aux = train_step(run.net, run.model, run.criterion, opt, run.optimizers["aux"], x, lm,
                             cfg.clip_grad, run.distiller, cfg.distill)
    run.step += 1
    return losses, aux


LOG_FIELDS = ["step", "time_s", "loss", "bpp", "psnr_db", "sparsity", "reg", "aux", "lr"]


def _log(run: _Run, losses: dict, aux: torch.Tensor, bar, t_start: float) -> None:
    """A row of ``log.csv`` and the progress bar's figures (reads the losses: syncs)."""
    row = [run.step, round(time.time() - t_start, 2)] + [
        round(losses[k].item(), 5) for k in ("loss", "bpp", "psnr_db", "sparsity", "reg")
    ] + [round(aux.item(), 3), run.optimizers["main"].param_groups[0]["lr"]]
    with run.log_path.open("a", newline="") as f:
        csv.writer(f).writerow(row)
    extra = {"distill": f"{float(losses['distill']):.3f}"} if "distill" in losses else {}
    bar.set_postfix(loss=f"{losses['loss'].item():.3f}", bpp=f"{float(losses['bpp']):.3f}",
                    psnr=f"{float(losses['psnr_db']):.2f}",
                    sp=f"{float(losses['sparsity']):.2f}", **extra)


def _validate_into_history(run: _Run, bar) -> None:
    v = validate(run.model, run.cfg, run.val_images, run.device)
    v["step"] = run.step
    run.history.append(v)
    bar.write(f"[val step {run.step}] {_fmt_val(v)}", file=sys.stderr)


def _should_stop(run: _Run, t_start: float, max_minutes: float | None) -> bool:
    """Stop flag after a step: signal, wall-clock limit, time budget (agreed across ranks)."""
    stop = run.stop
    if max_minutes and time.time() - t_start > 60 * max_minutes:
        stop = True
    if run.cfg.time_budget_minutes and run.seconds >= 60 * run.cfg.time_budget_minutes:
        stop = True
    if run.distributed:
        flag = torch.tensor([float(stop)], device=run.device)
        dist.all_reduce(flag)
        stop = bool(flag.item())
    return stop


def _checkpoint(run: _Run) -> None:
    if run.main_proc:
        save_checkpoint(run.ckpt_path, run.model, run.optimizers, run.step,
                        {"recipe": run.cfg.to_dict(), "history": run.history,
                         "git_commit": git_commit(), "train_seconds": run.seconds,
                         "pretrained": run.pretrained})


def _finish(run: _Run, bar) -> None:
    """After the last step: validate a budget-ended run, checkpoint, report, leave the group."""
    cfg = run.cfg
    if run.main_proc and cfg.time_budget_minutes and (
            not run.history or run.history[-1]["step"] != run.step):
        _validate_into_history(run, bar)   # the budget ended the run: validate it
    _checkpoint(run)
    bar.close()
    if run.main_proc:
        budget_spent = cfg.time_budget_minutes and run.seconds >= 60 * cfg.time_budget_minutes
        state = ("finished" if run.step >= cfg.steps or budget_spent
                 else "stopped (resume with --resume)")
        print(f"{cfg.name}: {state} at step {run.step}; checkpoint {run.ckpt_path}",
              file=sys.stderr)
    if run.distributed:
        dist.barrier()
        dist.destroy_process_group()


def train(cfg: TrainConfig, resume: bool = False, init: str | None = None,
          max_minutes: float | None = None) -> Path:
    """Run (or continue) the recipe ``cfg``; returns the run folder.

    ``init``: starting weights — an exported ``.safetensors`` model, a run folder or
    checkpoint, or ``compressai:ARCH[:QUALITY]`` (CompressAI's pretrained zoo; see
    :mod:`varicodec.train.init`). Ignored when resuming a run that has a checkpoint.
    """
    run = _setup(cfg, resume, init)

    def _on_signal(signum, frame):  # finish the step, checkpoint, exit
        run.stop = True

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _train_steps(run, max_minutes)
    finally:
        # The handlers hold `run`, hence the batch generator and its DataLoader workers:
        # left installed, they keep the workers alive until interpreter exit, where
        # multiprocessing SIGTERMs its daemon children (the workers ignore it) and then
        # joins them forever. Restore them and stop the workers here.
        for s, handler in previous.items():
            signal.signal(s, handler)
        run.batches.close()
    return run.run_dir


def _train_steps(run: _Run, max_minutes: float | None) -> None:
    """The loop of :func:`train`: steps, logs, validation, checkpoints, then ``_finish``."""
    cfg = run.cfg

    if run.main_proc and not run.log_path.exists():
        with run.log_path.open("w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
    bar = _progress_bar(cfg, run.step, run.main_proc)
    t_start = time.time()
    last_ckpt = time.time()
    run.model.train()
    t_step = time.time()
    while run.step < cfg.steps and not run.stop:
        losses, aux = _step(run)
        now = time.time()
        run.seconds += now - t_step
        t_step = now
        if run.main_proc:
            bar.update(1)
            if run.step % cfg.log_every == 0 or run.step == 1:
                _log(run, losses, aux, bar, t_start)
            if run.step % cfg.val_every == 0 or run.step == cfg.steps:
                _validate_into_history(run, bar)
                t_step = time.time()  # validation time is not training time
        run.stop = _should_stop(run, t_start, max_minutes)
        if time.time() - last_ckpt > 60 * cfg.checkpoint_minutes:
            _checkpoint(run)
            last_ckpt = time.time()
    _finish(run, bar)


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
