"""Weights on disk: safetensors only, with the model config in the metadata.

A file holds every tensor of a :class:`VaricodecModel` (including CompressAI's
entropy-coder tables after ``update()``), floats optionally as fp16, and in its
metadata ``varicodec.config`` (JSON for :func:`create_model`) and
``varicodec.card`` (the model card: recipe, data, steps, validation figures).
Nothing is ever unpickled.

:func:`load_model` takes a file or a registry name with bundled weights
(``load_model("hyperprior-ecgbm")``). :func:`read_card` reads metadata only and
imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from ..util import atomic_write
from . import registry as _registry
from .registry import bundled_weights, create_model, list_models

if TYPE_CHECKING:
    from .codec_model import VaricodecModel

__all__ = ["derived_buffers", "save_model", "load_model", "model_from_state", "read_card",
           "weights_fingerprint", "weights_path"]


def weights_fingerprint(model: VaricodecModel) -> bytes:
    """8-byte SHA-256 digest of all tensors (names, dtypes, values) of ``model``."""
    import torch

    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.digest()[:8]


def derived_buffers(model) -> set[str]:
    """State-dict keys that construction fixes and training never changes, so weights
    files leave them out: the masks of masked (causal) convolutions, CompressAI's
    ``MaskedConv2d.mask`` (the joint model's context model: 20.5 MB of float32 at
    M = 320, more than a quarter of an fp16 joint file). Loading takes them from the
    freshly built model; the fingerprint, computed on the model, is unchanged."""
    from compressai.layers import MaskedConv2d

    return {f"{name}.mask" if name else "mask" for name, m in model.named_modules()
            if isinstance(m, MaskedConv2d)}


def save_model(model: VaricodecModel, path: str | os.PathLike, card: dict | None = None,
               half: bool = True) -> Path:
    """Write ``model`` (after ``update()``) to ``path`` atomically.

    With ``half`` the float tensors are stored as fp16; the entropy-coder tables
    are rebuilt from the rounded weights first, so what is stored is exactly
    what a loaded model computes.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if half:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    model.update(force=True)
    # Only learned parameters go to fp16; buffers (GDN's 2^-36 pedestal, likelihood and
    # scale bounds, CDF tables) keep their dtype: fp16 would flush some of them to zero.
    params = {k for k, _ in model.named_parameters()}
    derived = derived_buffers(model)
    tensors = {}
    for k, v in model.state_dict().items():
        if k in derived:
            continue
        v = v.detach().cpu().contiguous()
        if half and k in params:
            v = v.half()
        tensors[k] = v.clone()
    meta = {"varicodec.config": json.dumps(model.config),
            "varicodec.card": json.dumps(card or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_card(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(config, card)`` from a weights file's metadata, without loading tensors."""
    with safe_open(str(path), framework="numpy") as f:  # metadata only: no torch needed
        meta = f.metadata() or {}
    if "varicodec.config" not in meta:
        raise ValueError(f"{path} is not a varicodec weights file (no varicodec.config metadata)")
    return json.loads(meta["varicodec.config"]), json.loads(meta.get("varicodec.card", "{}"))


def model_from_state(config: dict, state: dict) -> VaricodecModel:
    """Build the model ``config`` describes (``arch``, ``variant`` and its keyword
    arguments) and load ``state``, float tensors cast to the model's dtypes (fp16 on disk)."""
    model = create_model(f"{config['arch']}-{config['variant']}", **config)
    own = model.state_dict()
    # derived buffers absent from the file (derived_buffers) keep the model's own values
    state = {**{k: own[k] for k in derived_buffers(model) if k not in state}, **state}
    model.load_state_dict({k: (v.to(own[k].dtype) if k in own and own[k].is_floating_point()
                               else v) for k, v in state.items()})
    return model


def weights_path(spec: str | os.PathLike) -> Path:
    """The weights file ``spec`` names: a registry name with bundled weights, or a path.

    Raises ``FileNotFoundError`` with a one-line reason (and the right spelling
    when a bundled model's file name was given as a path).
    """
    text = os.fspath(spec)
    if text in list_models():
        path = bundled_weights(text)
        if path is None:
            have = [n for n in list_models() if bundled_weights(n)]
            raise FileNotFoundError(
                f"no bundled weights for model {text!r} (bundled: {', '.join(have) or 'none'}); "
                "give a path to a .safetensors file, or create_model() for fresh weights"
            )
        return path
    path = Path(text)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".safetensors")
    if stem in list_models() and bundled_weights(stem):
        raise FileNotFoundError(
            f"no such weights file: {text} (for the bundled weights give the registry name "
            f"{stem!r})"
        )
    raise FileNotFoundError(f"no such weights file: {text}")


def load_model(spec: str | os.PathLike, device: str = "cpu") -> VaricodecModel:
    """Build the model described in a weights file's metadata and load its weights (eval mode).

    ``spec``: a path to a ``.safetensors`` file, or a registry name whose weights are
    bundled with the package (``"hyperprior-ecgbm"``; ``varicodec models`` lists them).
    """
    path = weights_path(spec)
    config, card = read_card(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    model = model_from_state(config, state)
    model.card = card
    model.source = str(path)
    return model.to(device).eval()


def describe_bundled(name: str) -> str | None:
    """Where ``name``'s bundled weights come from, in one line (``None`` if not bundled)."""
    path = bundled_weights(name)
    if path is None:
        return None
    shown = path.relative_to(_registry.WEIGHTS_DIR.parent.parent)  # varicodec/weights/…
    try:
        _, card = read_card(path)
    except Exception as e:  # a damaged file still gets listed, with the reason
        return f"{shown}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    bits = [str(shown)]
    recipe = (card.get("recipe") or {}).get("name")
    steps = card.get("total_steps", card.get("steps"))
    if recipe:
        bits.append(f"recipe {recipe}")
    if steps:
        bits.append(f"{steps} steps")
    return ", ".join(bits)
