"""Resumable training checkpoints in one safetensors file (no pickles).

Tensors: the model (``model.*``), both optimisers' per-parameter state
(``opt.<name>.<param index>.<key>``) and the torch RNG state. Metadata (JSON):
step, recipe, optimiser hyper-parameters, Python/NumPy RNG states, validation
history. Written to a temporary file and renamed, so a crash never leaves a
half checkpoint.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..util import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint"]


def _optim_tensors(name: str, opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{name}.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optim_restore(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    prefix = f"opt.{name}."
    for key, v in tensors.items():
        if key.startswith(prefix):
            pid, k = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[k] = v
    for key, v in meta["scalars"].items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(path: Path, model: torch.nn.Module, optimizers: dict, step: int,
                    extra: dict) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone()
               for k, v in model.state_dict().items()}
    opt_meta = {}
    for name, opt in optimizers.items():
        t, m = _optim_tensors(name, opt)
        tensors.update(t)
        opt_meta[name] = m
    tensors["rng.torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    meta = {
        "step": step,
        "optimizers": opt_meta,
        "rng.python": random.getstate(),
        "rng.numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: save_file(
        tensors, tmp, metadata={"varicodec.checkpoint": json.dumps(meta)}))


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """``(model state dict, other tensors, metadata)`` of a checkpoint file."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {})["varicodec.checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model_sd = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    return model_sd, tensors, meta


def restore_state(tensors: dict, meta: dict, optimizers: dict) -> None:
    for name, opt in optimizers.items():
        _optim_restore(name, opt, tensors, meta["optimizers"][name])
    torch.set_rng_state(tensors["rng.torch"])
    py = meta["rng.python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    ns = meta["rng.numpy"]
    np.random.set_state((ns[0], np.array(ns[1], dtype=np.uint32), *ns[2:]))
