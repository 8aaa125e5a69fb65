"""Results files: one JSON document per evaluated curve.

The schema (``"schema": "varicodec-eval/1"``) is documented field by field in
``docs/eval.md``. In short::

    {
      "schema": "varicodec-eval/1",
      "label": "hyperprior-ecgbm",        curve name used by plots and tables
      "kind": "model" | "codec",
      "model": {...} | null,              name, arch, variant, files (+ fingerprints),
                                          parameters, bytes_on_disk, trained, config
      "codec": {...} | null,              name, description, library, setting, options
      "coder": "varicodec.codec",         what produced the files whose size is the rate
      "dataset": {"path", "name", "images", "limit"},
      "environment": {...},               git commit, machine, torch threads, versions, time
      "points": [                          one per rate point, in the order run
        {"setting": {...}, "lmbda", "quality", "source", "fingerprint",
         "bpp", "bpp_estimate", "psnr_db", "ms_ssim", "ms_ssim_db",
         "encode_s", "decode_s", "encoder_flops", "decoder_flops",
         "sparsity": {layer: fraction}, "sparsity_mean",
         "images": [{"image", "width", "height", "bytes", "bpp", ...}]}
      ]
    }

Every mean is the plain average over images of the per-image values (as in
CompressAI's evaluation); values that do not apply are ``null``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..util import atomic_write, git_commit, git_dirty

__all__ = [
    "SCHEMA",
    "PER_IMAGE_MEANS",
    "environment",
    "summarize",
    "save_results",
    "load_results",
    "curve",
    "jsonable",
    "merge_results",
]

SCHEMA = "varicodec-eval/1"

#: per-image fields averaged into each rate point
PER_IMAGE_MEANS = (
    "bpp", "bpp_estimate", "psnr_db", "ms_ssim", "encode_s", "decode_s",
    "encoder_flops", "decoder_flops",
)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load_average() -> list[float] | None:
    """1, 5 and 15-minute load averages: how busy the machine was (timings depend on it)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing optional library is just recorded as None
        return None


def environment() -> dict[str, Any]:
    """Where and with what a measurement ran (stored in every results file)."""
    from .. import __version__

    commit = git_commit()
    return {
        "git_commit": commit,
        "git_dirty": git_dirty() if commit is not None else None,
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": _load_average(),
        "python": platform.python_version(),
        "varicodec": __version__,
        "torch": torch.__version__,
        "compressai": _version("compressai"),
        "pillow": _version("PIL"),
        "imagecodecs": _version("imagecodecs"),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def summarize(images: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over images of one rate point: the fields of :data:`PER_IMAGE_MEANS`,
    ``ms_ssim_db`` and the per-layer ``sparsity`` (plus its mean over layers)."""
    from ..metrics import ms_ssim_db

    out: dict[str, Any] = {k: _mean(im.get(k) for im in images) for k in PER_IMAGE_MEANS}
    ms = out["ms_ssim"]
    out["ms_ssim_db"] = ms_ssim_db(ms) if ms is not None and ms < 1 else None
    layers: dict[str, list[float]] = {}
    for im in images:
        for name, s in (im.get("sparsity") or {}).items():
            layers.setdefault(name, []).append(s)
    out["sparsity"] = {n: float(np.mean(v)) for n, v in layers.items()}
    out["sparsity_mean"] = _mean(out["sparsity"].values())
    return out


def jsonable(obj: Any) -> Any:
    """Plain JSON types; NaN and ±inf become ``null``, numpy scalars Python ones."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_results(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``results`` as indented JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(jsonable(results), indent=1, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check one results file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such results file: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ValueError(f"{path} is not a varicodec results file (schema {SCHEMA})")
    if not data.get("points"):
        raise ValueError(f"{path} has no rate points")
    data.setdefault("label", path.stem)
    data["_path"] = str(path)
    return data


def merge_results(results: Sequence[dict[str, Any]], label: str | None = None) -> dict[str, Any]:
    """One curve from the evaluations of its parts (e.g. qualities 1–5 and 6–8, evaluated
    separately): the points of all, in λ order. For a fixed-rate set the model block's
    ``files``, ``models`` and ``bytes_on_disk`` add up; a variable-rate model's parts must
    be one set of weights (the same fingerprint at every point), and its model block stays
    one model. The parts must be evaluations of models of one registry name (architecture
    and variant) on the same images with the same options, all fixed-rate or all
    variable-rate, and no λ may come twice; ``ValueError`` says which part breaks that.
    ``merged_from`` lists the parts' files and labels."""
    if len(results) < 2:
        raise ValueError("merge needs at least two results files")

    def where(r: dict) -> str:
        return r.get("_path") or r.get("label") or "a results file"

    first = results[0]
    variable = bool((first.get("model") or {}).get("variable_rate"))
    for r in results:
        model = r.get("model") or {}
        if r.get("kind") != "model":
            raise ValueError(f"{where(r)}: merge joins model evaluations; this is {r.get('kind')}")
        if bool(model.get("variable_rate")) != variable:
            kinds = ("a fixed-rate set", "a variable-rate model")
            raise ValueError(f"{where(r)}: {kinds[not variable]}, not "
                             f"{kinds[variable]} like {where(first)}")
        if model.get("name") != first["model"].get("name"):
            raise ValueError(f"{where(r)}: model {model.get('name')}, not "
                             f"{first['model'].get('name')} like {where(first)}")
        if (r.get("dataset") or {}).get("files") != (first.get("dataset") or {}).get("files"):
            raise ValueError(f"{where(r)}: other images than {where(first)}")
        if r.get("options") != first.get("options"):
            raise ValueError(f"{where(r)}: options {r.get('options')}, not {first.get('options')}")
    lmbdas = [round(float(p["lmbda"]), 6) for r in results for p in r["points"]]
    twice = sorted({lm for lm in lmbdas if lmbdas.count(lm) > 1})
    if twice:
        raise ValueError(f"λ {', '.join(f'{lm:g}' for lm in twice)} comes in more than one part")
    models = [r["model"] for r in results]
    if variable:
        prints = {p.get("fingerprint") for p in first["points"]}
        for r in results:
            other = {p.get("fingerprint") for p in r["points"]}
            if None in other or len(other | prints) > 1:
                raise ValueError(f"{where(r)}: other weights than {where(first)} (fingerprint "
                                 f"{', '.join(sorted(map(str, other)))}, not "
                                 f"{', '.join(sorted(map(str, prints)))})")
        info = dict(models[0])
    else:
        sizes = [m.get("bytes_on_disk") for m in models]
        info = {**models[0],
                "files": [f for m in models for f in m.get("files") or []],
                "models": sum(int(m.get("models") or 1) for m in models),
                "bytes_on_disk": sum(sizes) if all(sizes) else None}
    merged = {k: v for k, v in first.items() if k != "_path"}
    merged.update(label=label or first.get("label"), model=info,
                  points=sorted((p for r in results for p in r["points"]),
                                key=lambda p: p["lmbda"]),
                  merged_from=[{"file": r.get("_path"), "label": r.get("label")}
                               for r in results])
    return merged


def curve(
    results: dict[str, Any], y: str = "psnr_db", x: str = "bpp",
) -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the points where both are known, sorted by ``x``."""
    pts = [(p[x], p[y]) for p in results["points"]
           if p.get(x) is not None and p.get(y) is not None]
    pts.sort()
    return [a for a, _ in pts], [b for _, b in pts]
