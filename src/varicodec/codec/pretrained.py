"""Which weights code an image: ``resolve_model(spec)``.

``spec`` is a :class:`VaricodecModel`, a registry name (bundled weights at
``varicodec/weights/<name>.safetensors``), a path to a ``.safetensors`` file,
or ``None`` for :data:`DEFAULT_MODEL`. Loaded files are cached (keyed by path,
size and modification time) together with their weights fingerprint, so a
folder of images or a fuzzing run loads and hashes the weights once.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..errors import VaricodecError
from ..models import io as _io
from ..models import registry as _registry
from ..models.registry import list_models

if TYPE_CHECKING:
    from ..models import VaricodecModel

__all__ = ["DEFAULT_MODEL", "bundled_path", "resolve_model", "fingerprint"]

DEFAULT_MODEL = "hyperprior-ecgbm"
_CACHE_SIZE = 4
_cache: OrderedDict[tuple, tuple[VaricodecModel, bytes]] = OrderedDict()
_fingerprints: dict[int, bytes] = {}  # id(model) → fingerprint, for cached models only

ModelSpec = Union["VaricodecModel", str, os.PathLike, None]


def bundled_path(name: str) -> Path:
    """Where registry name ``name``'s bundled weights are (whether or not they exist)."""
    return _registry.WEIGHTS_DIR / f"{name}.safetensors"


def weights_path(spec: str | os.PathLike | None) -> Path:
    """The weights file ``spec`` names, with one-line errors when there is none."""
    if spec is None:
        spec = DEFAULT_MODEL
    text = os.fspath(spec)
    path = Path(text)
    if text not in list_models():
        if path.is_dir():
            raise VaricodecError(f"model {text!r} is a folder, not a .safetensors weights file")
        if not path.is_file() and not (path.suffix == ".safetensors" or os.sep in text
                                       or "/" in text):
            raise VaricodecError(
                f"unknown model {text!r}: give a registry name ({', '.join(list_models())}) "
                "or a path to a .safetensors file"
            )
    try:
        return _io.weights_path(text)
    except FileNotFoundError as e:
        raise VaricodecError(str(e)) from None


def _load(path: Path) -> tuple[VaricodecModel, bytes]:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    try:
        model = _io.load_model(path)
    except (VaricodecError, FileNotFoundError):
        raise
    except Exception as e:  # safetensors / JSON / shape errors all mean "not our weights"
        raise VaricodecError(f"cannot load weights from {path}: {_one_line(e)}") from e
    entry = (model, _io.weights_fingerprint(model))
    _cache[key] = entry
    _fingerprints[id(model)] = entry[1]
    while len(_cache) > _CACHE_SIZE:
        old, _ = _cache.popitem(last=False)[1]
        _fingerprints.pop(id(old), None)
    return entry


def resolve_model(spec: ModelSpec = None) -> VaricodecModel:
    """A ready-to-code model (eval mode, entropy tables present) for ``spec``."""
    from ..models import VaricodecModel

    if isinstance(spec, VaricodecModel):
        model = spec.eval()
    else:
        model = _load(weights_path(spec))[0]
    if not _has_tables(model):
        raise VaricodecError(
            f"model {model.name} has no entropy-coder tables: call model.update() first"
        )
    return model


def fingerprint(model: VaricodecModel) -> bytes:
    """The 8-byte weights fingerprint (cached for models loaded here)."""
    fp = _fingerprints.get(id(model))
    if fp is not None and any(m is model for m, _ in _cache.values()):
        return fp
    return _io.weights_fingerprint(model)


def lmbda_range_of(spec: str | os.PathLike | None) -> tuple[float, float] | None:
    """The λ range in a weights file's metadata, without loading tensors (or ``None``)."""
    try:
        config, _ = _io.read_card(weights_path(spec))
        return tuple(config["lmbda_range"])  # type: ignore[return-value]
    except Exception:
        return None


def _has_tables(model: VaricodecModel) -> bool:
    coders = [model.net.entropy_bottleneck, model.net.gaussian_conditional]
    return all(c._offset.numel() > 0 and c._quantized_cdf.numel() > 0 for c in coders)


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
