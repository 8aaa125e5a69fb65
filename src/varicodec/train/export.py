"""``varicodec export``: a run's checkpoint → weights file + model card."""

from __future__ import annotations

import json
from pathlib import Path

from ..models import read_card, save_model
from .checkpoint import load_checkpoint
from .config import TrainConfig
from .loop import CHECKPOINT, build_model

__all__ = ["export_run"]


def lineage(recipe: dict, step: int, depth: int = 0) -> list[dict]:
    """The chain of runs this one started from, oldest first: ``[{run, model, steps}]``.

    Follows ``recipe.init`` through run folders (their checkpoints) and exported weights
    (their cards); a missing or unreadable link ends the chain with ``"steps": None``.
    """
    here = {"run": recipe.get("name"), "model": recipe.get("model"), "steps": step}
    init = recipe.get("init")
    if not init or depth > 20:
        return [here]
    path = Path(init)
    try:
        if path.is_dir() or path.suffix != ".safetensors":
            ckpt = path / CHECKPOINT if path.is_dir() else path
            _, _, meta = load_checkpoint(ckpt)
            before = lineage(meta.get("recipe", {}), meta.get("step"), depth + 1)
        else:
            _, card = read_card(path)
            before = card.get("lineage") or [{"run": str(path), "model": card.get("name"),
                                              "steps": card.get("steps")}]
    except (OSError, ValueError, KeyError):
        before = [{"run": str(init), "model": None, "steps": None}]
    return before + [here]


def export_run(run: str | Path, out: str | Path, half: bool = True) -> tuple[Path, dict]:
    """Write the run's model (after ``update()``) to ``out`` with its model card.

    The card (also written beside as ``<out>.json``) names the architecture,
    variant, N, M, λ or λ range, data, steps, recipe, last validation figures
    and git commit.
    """
    run = Path(run)
    path = run / CHECKPOINT if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name}")
    sd, _, meta = load_checkpoint(path)
    cfg = TrainConfig(**meta["recipe"])
    model = build_model(cfg)
    model.load_state_dict(sd)
    model.eval()
    history = meta.get("history", [])
    chain = lineage(meta["recipe"], meta["step"])
    card = {
        "name": model.name,
        "arch": model.arch,
        "variant": model.variant,
        "N": model.config["N"],
        "M": model.config["M"],
        "lmbda": None if model.variable_rate else cfg.lmbda,
        "lmbda_range": cfg.lmbda_range if model.variable_rate else None,
        "train_data": cfg.train_dir,
        "val_data": cfg.val_dir,
        "steps": meta["step"],
        "lineage": chain,
        "pretrained": meta.get("pretrained"),  # CompressAI zoo source, file, sha256 (or None)
        "total_steps": (sum(link["steps"] for link in chain)
                        if all(link["steps"] is not None for link in chain) else None),
        "recipe": cfg.to_dict(),
        "validation": history[-1] if history else None,
        "git_commit": meta.get("git_commit", "unknown"),
        "dtype_on_disk": "float16" if half else "float32",
    }
    save_model(model, out, card=card, half=half)
    Path(str(out) + ".json").write_text(json.dumps(card, indent=2) + "\n")
    return out, card
