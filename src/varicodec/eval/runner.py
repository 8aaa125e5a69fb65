"""Run models and classical codecs over an image folder and measure everything.

For each rate point and image a model goes through:

1. the **real coder** (:class:`Coder`, by default :mod:`varicodec.codec`):
   ``encode`` → file bytes (rate = bytes·8 / pixels, header included) and
   ``decode`` → the 8-bit RGB image the user gets; both timed (wall clock);
2. PSNR and MS-SSIM of that image against the original (:mod:`varicodec.metrics`);
3. a **FLOP pass**: ``model.compress`` and ``model.decompress`` on the padded
   image under :func:`~varicodec.eval.flops.count_flops` (encoder and decoder
   separately), which also leaves every gate's decision for the sparsity report;
4. an **estimate pass**: ``model.forward`` at the same λ, whose likelihoods give
   the rate the model predicts (reported beside the real one, never instead).

Passes 3 and 4 are separate from the timed one so counting does not slow it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..imageio import load_rgb, pad_to_multiple, to_tensor
from ..losses import bpp_from_likelihoods
from ..metrics import ms_ssim, psnr_db
from ..models import VaricodecModel, create_model, list_models, load_model, weights_fingerprint
from ..models.refine import check_steps
from ..progress import progress_bar
from ..quality import QUALITY_LMBDAS, lmbda_to_quality, quality_to_lmbda
from ..util import IMAGE_SUFFIXES
from ..util import list_images as _list_files
from .classical import ClassicalCodec
from .flops import count_flops, parameter_count
from .results import SCHEMA, environment, summarize

__all__ = [
    "IMAGE_SUFFIXES",
    "Coder",
    "VaricodecCoder",
    "RatePoint",
    "ModelSet",
    "list_images",
    "parse_values",
    "model_set",
    "evaluate_models",
    "evaluate_codec",
]


# ------------------------------------------------------------------- coder
class Coder(Protocol):
    """The real file format: what the rate of a model is measured on.

    ``model`` is the weights file when the model has one (so the coder loads
    and fingerprints it once, as it does for users) or the model itself;
    ``lmbda`` is ``None`` for fixed-rate models.
    """

    name: str

    def encode(self, rgb: np.ndarray, model: VaricodecModel | Path,
               lmbda: float | None) -> bytes: ...

    def decode(self, data: bytes, model: VaricodecModel | Path) -> np.ndarray: ...


class VaricodecCoder:
    """:func:`varicodec.codec.encode` / :func:`varicodec.codec.decode` (header included)."""

    name = "varicodec.codec"

    def __init__(self, refine: int = 0) -> None:
        try:
            from .. import codec
        except ImportError as e:
            raise ValueError(
                "varicodec eval measures real file sizes with varicodec.codec, which is not "
                f"available in this build ({e})"
            ) from None
        self._codec = codec
        #: latent refinement steps of every encode (``varicodec encode --refine``)
        self.refine = check_steps(refine)
        if self.refine:
            self.name += f" --refine {self.refine}"

    def encode(self, rgb: np.ndarray, model: VaricodecModel | Path,
               lmbda: float | None) -> bytes:
        return self._codec.encode(rgb, model, lmbda=lmbda, refine=self.refine)

    def decode(self, data: bytes, model: VaricodecModel | Path) -> np.ndarray:
        image = self._codec.decode(data, model)
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


# ------------------------------------------------------------------ inputs
def list_images(directory: str | os.PathLike, limit: int | None = None) -> list[Path]:
    """Image files directly in ``directory``, sorted by name, at most ``limit``."""
    files = _list_files(directory, what="dataset folder")
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {directory}")
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        files = files[:limit]
    return files


def parse_values(text: str | Sequence[str], what: str = "value") -> list[float]:
    """``"1..8"``, ``"1,3,5"``, ``"0.0018,0.0035"`` (or several of those) → floats.

    ``a..b`` is the integers from ``a`` to ``b`` inclusive.
    """
    tokens = [text] if isinstance(text, str) else list(text)
    values: list[float] = []
    for token in tokens:
        for part in filter(None, (p.strip() for p in str(token).split(","))):
            m = re.fullmatch(r"q?(\d+)\s*\.\.\s*q?(\d+)", part)
            try:
                if m:
                    lo, hi = int(m.group(1)), int(m.group(2))
                    if hi < lo:
                        raise ValueError
                    values.extend(float(v) for v in range(lo, hi + 1))
                else:
                    values.append(float(part.removeprefix("q")))
            except ValueError:
                raise ValueError(f"cannot read {what} list {token!r} (try 1..8 or 1,3,5)") from None
    if not values:
        raise ValueError(f"empty {what} list")
    return values


# ------------------------------------------------------------------ models
@dataclass
class RatePoint:
    """One point of a curve: a model (built on demand) and the λ to code at."""

    load: Callable[[], VaricodecModel]
    lmbda: float | None  # None: a fixed-rate model at its own λ
    setting: dict[str, float]
    source: str | None = None  # weights file, or None for a freshly built model


@dataclass
class ModelSet:
    """The rate points of one curve: one variable-rate model, or fixed-rate models."""

    label: str
    points: list[RatePoint]
    files: list[Path] = field(default_factory=list)
    trained: bool = True


_SET = re.compile(r"^(?P<base>.+)@q(?P<spec>[\dq.,\s]+)$")
_SUFFIX = ".safetensors"


def _registry_loader(name: str, lmbda: float | None, config: dict) -> Callable[[], VaricodecModel]:
    def load() -> VaricodecModel:
        torch.manual_seed(0)  # untrained models are reproducible
        kw = dict(config)
        if lmbda is not None:
            kw["lmbda"] = lmbda
        model = create_model(name, **kw).eval()
        model.update(force=True)
        return model
    return load


def _file_loader(path: Path) -> Callable[[], VaricodecModel]:
    return lambda: load_model(path)


def _bundled(name: str) -> Path | None:
    """The weights bundled with the package for registry name ``name``, if any."""
    from ..models.registry import bundled_weights

    return bundled_weights(name)


def _set_candidates(base: str, q: int) -> list[Path]:
    stem = base.removesuffix(_SUFFIX)
    if "{q}" in stem:
        names = [stem.replace("{q}", str(q))]
    else:
        names = [f"{stem}@q{q}", f"{stem}-q{q}", f"{stem}_q{q}", f"{stem}.q{q}",
                 f"{stem}/q{q}", f"{stem}q{q}"]
    return [Path(n + s) for n in names for s in (_SUFFIX, "")]


def _expand_set(base: str, spec: str, config: dict) -> tuple[list[RatePoint], list[Path], bool]:
    qualities = [int(q) for q in parse_values(spec, "quality")]
    bad = [q for q in qualities if not 1 <= q <= len(QUALITY_LMBDAS)]
    if bad:
        raise ValueError(f"qualities must lie in 1..{len(QUALITY_LMBDAS)}, got {bad}")
    points, files = [], []
    found = {q: next((p for p in _set_candidates(base, q) if p.is_file()), None) for q in qualities}
    if base in list_models() and not any(found.values()):
        for q in qualities:
            lm = QUALITY_LMBDAS[q - 1]
            points.append(RatePoint(_registry_loader(base, lm, config), None, {"quality": q}))
        return points, files, False
    missing = [q for q, p in found.items() if p is None]
    if missing:
        tried = ", ".join(str(p) for p in _set_candidates(base, missing[0])[::2])
        raise FileNotFoundError(f"no weights for {base}@q{missing[0]} (tried {tried})")
    for q, path in found.items():
        assert path is not None
        points.append(RatePoint(_file_loader(path), None, {"quality": q}, str(path)))
        files.append(path)
    return points, files, True


def model_set(
    specs: Sequence[str],
    lmbdas: Sequence[float] | None = None,
    qualities: Sequence[float] | None = None,
    config: dict | None = None,
    label: str | None = None,
    untrained: bool = False,
) -> ModelSet:
    """Turn ``--model`` arguments into the rate points of one curve.

    Args:
        specs: one weights file or registry name (a variable-rate model, or a
            fixed-rate one at its own λ; a registry name means its bundled
            weights, or an untrained model when there are none or with
            ``untrained``); several fixed-rate weights files; or
            ``BASE@q1..8`` — the fixed-rate set ``BASE-q1.safetensors`` …
            (also ``BASE@q1``, ``_q1``, ``.q1``, ``/q1``, ``q1``, or a literal
            ``{q}`` in ``BASE``). A registry name ``BASE`` with no such files
            builds untrained models at CompressAI's λ of each quality.
        lmbdas, qualities: rate points of a variable-rate model (default:
            qualities 1..8).
        config: keyword arguments for models built from registry names (N, M, …).
        label: the curve's name (default: the model name).
        untrained: build registry names as untrained models even when weights
            are bundled (for cost measurements).
    """
    config = dict(config or {})
    if not specs:
        raise ValueError("give a model: a weights file, a registry name, or NAME@q1..8")
    if lmbdas and qualities:
        raise ValueError("give --lmbda or --quality, not both")
    points: list[RatePoint] = []
    files: list[Path] = []
    trained = True
    for spec in specs:
        m = _SET.match(spec)
        if m and not Path(spec).is_file():
            p, f, t = _expand_set(m.group("base"), m.group("spec"), config)
            points += p
            files += f
            trained &= t
        elif Path(spec).is_file():
            points.append(RatePoint(_file_loader(Path(spec)), None, {}, spec))
            files.append(Path(spec))
        elif spec in list_models() and not untrained and (bundled := _bundled(spec)):
            points.append(RatePoint(_file_loader(bundled), None, {}, str(bundled)))
            files.append(bundled)
        elif spec in list_models():
            points.append(RatePoint(_registry_loader(spec, None, config), None, {}))
            trained = False
        else:
            raise FileNotFoundError(
                f"{spec!r} is neither a weights file nor a model name ({', '.join(list_models())})"
            )
    first = points[0].load()
    name = first.name
    if first.variable_rate:
        if len(points) != 1:
            raise ValueError(f"{name} is variable-rate: evaluate it alone, at --lmbda/--quality")
        base = points[0]
        if lmbdas:
            points = [RatePoint(base.load, float(v), {"lmbda": float(v)}, base.source)
                      for v in lmbdas]
        else:
            qs = qualities or list(range(1, len(QUALITY_LMBDAS) + 1))
            points = [RatePoint(base.load, quality_to_lmbda(q), {"quality": float(q)},
                                base.source) for q in qs]
    elif lmbdas or qualities:
        raise ValueError(
            f"{name} is a fixed-rate model: it codes only at its own lambda; leave out "
            "--lmbda/--quality (give several checkpoints or NAME@q1..8 for a curve)"
        )
    loaded = {id(points[0].load): first}
    for p in points:  # the first model is kept, the others load when their point runs
        if id(p.load) in loaded:
            model = loaded[id(p.load)]
            p.load = (lambda m=model: m)
    return ModelSet(label or (name + ("" if len(points) == 1 or first.variable_rate else " set")),
                    points, files, trained)


# ------------------------------------------------------------------- timing
def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def _image_metrics(name: str, rgb: np.ndarray, data: bytes, decoded: np.ndarray) -> dict:
    if decoded.shape != rgb.shape:
        raise ValueError(f"{name}: decoded image is {decoded.shape}, original {rgb.shape}")
    h, w = rgb.shape[:2]
    return {
        "image": name, "width": w, "height": h, "bytes": len(data),
        "bpp": len(data) * 8.0 / (h * w),
        "psnr_db": psnr_db(rgb, decoded),
        "ms_ssim": ms_ssim(rgb, decoded),
    }


class _Images:
    """Loads each image once (the sweep revisits every image at every point)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)
        self._cache: dict[Path, np.ndarray] = {}

    def __iter__(self):
        for p in self.paths:
            if p not in self._cache:
                self._cache[p] = load_rgb(p)
            yield p, self._cache[p]


def _dataset_info(paths: Sequence[Path], directory: str | os.PathLike | None,
                  limit: int | None) -> dict:
    d = Path(directory) if directory is not None else (paths[0].parent if paths else None)
    return {"path": str(d) if d else None, "name": d.name if d else None,
            "images": len(paths), "files": [p.name for p in paths], "limit": limit}


# ------------------------------------------------------------------- models
def _model_info(model: VaricodecModel, files: Sequence[Path], trained: bool) -> dict:
    return {
        "name": model.name, "arch": model.arch, "variant": model.variant,
        "variable_rate": model.variable_rate, "gated": model.gated,
        "config": model.config, "models": len(files) or 1,
        "files": [str(f) for f in files],
        "parameters": parameter_count(model),
        "bytes_on_disk": sum(f.stat().st_size for f in files) if files else None,
        "trained": trained,
        "card": getattr(model, "card", None),
    }


def _warm_up(coder: Coder, spec: VaricodecModel | Path, rgb: np.ndarray, f: int,
             lmbda: float | None) -> None:
    """One small round trip so loading and lazy initialisation are not timed."""
    crop = np.ascontiguousarray(rgb[: min(rgb.shape[0], 2 * f), : min(rgb.shape[1], 2 * f)])
    coder.decode(coder.encode(crop, spec, lmbda), spec)


def _model_passes(model: VaricodecModel, rgb: np.ndarray, lmbda: float | None,
                  flops: bool, estimate: bool) -> dict:
    out: dict[str, Any] = {}
    x = pad_to_multiple(to_tensor(rgb), model.downsampling_factor)
    lmbda_used = lmbda
    if lmbda is not None and model.lmbda_range is not None:  # the λ a file can carry
        lmbda_used = model.lmbda_range.coded(lmbda)
    if flops:
        t0 = time.perf_counter()
        enc, out["encoder_flops"] = count_flops(model.compress, x, lmbda)
        _, out["decoder_flops"] = count_flops(
            model.decompress, enc["strings"], enc["shape"], enc["lmbda_code"])
        out["flops_pass_s"] = time.perf_counter() - t0
        out["sparsity"] = model.sparsity()
    if estimate:
        t0 = time.perf_counter()
        with torch.no_grad():
            fw = model(x, lmbda_used)
        h, w = rgb.shape[:2]
        out["bpp_estimate"] = float(bpp_from_likelihoods(fw["likelihoods"], h * w)[0])
        out["estimate_pass_s"] = time.perf_counter() - t0
        out.setdefault("sparsity", model.sparsity())
    if model.gated and "sparsity" not in out:
        out["sparsity"] = None
    out["lmbda"] = lmbda_used if lmbda_used is not None else model.lmbda
    return out


def evaluate_models(
    models: ModelSet,
    images: Sequence[Path],
    coder: Coder | None = None,
    *,
    flops: bool = True,
    estimate: bool = True,
    warm_up: bool = True,
    progress: bool = True,
    dataset_dir: str | os.PathLike | None = None,
    limit: int | None = None,
) -> dict:
    """Evaluate every rate point of ``models`` on ``images``; returns a results dict."""
    coder = coder or VaricodecCoder()
    imgs = _Images(images)
    points: list[dict] = []
    info: dict | None = None
    bar = progress_bar(len(models.points) * len(imgs.paths), models.label, "img",
                       enabled=progress)
    previous: VaricodecModel | None = None
    fingerprint, n_models = "", 0
    try:
        for rp in models.points:
            model = rp.load().eval()
            if info is None:
                info = _model_info(model, models.files, models.trained)
            spec: VaricodecModel | Path = Path(rp.source) if rp.source else model
            if model is not previous:  # a fixed set brings a new model at every point
                n_models += 1
                fingerprint = weights_fingerprint(model).hex()
                if warm_up:
                    _warm_up(coder, spec, next(iter(imgs))[1], model.downsampling_factor,
                             rp.lmbda)
            previous = model
            per_image = []
            for path, rgb in imgs:
                t_start = time.perf_counter()
                data, enc_s = _timed(coder.encode, rgb, spec, rp.lmbda)
                decoded, dec_s = _timed(coder.decode, data, spec)
                t0 = time.perf_counter()
                row = _image_metrics(path.name, rgb, data, decoded)
                row["metrics_s"] = time.perf_counter() - t0
                row.update(encode_s=enc_s, decode_s=dec_s)
                row.update(_model_passes(model, rgb, rp.lmbda, flops, estimate))
                row["total_s"] = time.perf_counter() - t_start
                per_image.append(row)
                bar.update(1)
                bar.set_postfix(bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr_db']:.2f}")
            lm = per_image[0]["lmbda"]
            point = {
                "setting": rp.setting, "lmbda": lm, "quality": round(lmbda_to_quality(lm), 4),
                "source": rp.source,
                "fingerprint": fingerprint,
                "parameters": parameter_count(model),
                "bytes_on_disk": Path(rp.source).stat().st_size if rp.source else None,
            }
            point.update(summarize(per_image))
            point["images"] = [{k: v for k, v in r.items() if k != "lmbda"} for r in per_image]
            points.append(point)
    finally:
        bar.close()
    assert info is not None
    info["models"] = len(models.files) or n_models
    options = {"flops": flops, "estimate": estimate}
    if getattr(coder, "refine", 0):  # only then: results without it still merge
        options["refine"] = coder.refine
    return {
        "schema": SCHEMA, "label": models.label, "kind": "model", "model": info, "codec": None,
        "coder": coder.name, "options": options,
        "dataset": _dataset_info(imgs.paths, dataset_dir, limit),
        "environment": environment(), "points": points,
    }


# ------------------------------------------------------------------ codecs
def evaluate_codec(
    codec: ClassicalCodec,
    images: Sequence[Path],
    sweep: Sequence[float] | None = None,
    *,
    progress: bool = True,
    dataset_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    label: str | None = None,
) -> dict:
    """Evaluate a classical codec at every value of its sweep; returns a results dict."""
    values = list(sweep) if sweep else list(codec.sweep)
    imgs = _Images(images)
    points = []
    bar = progress_bar(len(values) * len(imgs.paths), codec.name, "img", enabled=progress)
    try:
        for value in values:
            per_image = []
            for path, rgb in imgs:
                t_start = time.perf_counter()
                data, enc_s = _timed(codec.encode, rgb, value)
                decoded, dec_s = _timed(codec.decode, data)
                t0 = time.perf_counter()
                row = _image_metrics(path.name, rgb, data, decoded)
                row["metrics_s"] = time.perf_counter() - t0
                row.update(encode_s=enc_s, decode_s=dec_s)
                row["total_s"] = time.perf_counter() - t_start
                per_image.append(row)
                bar.update(1)
                bar.set_postfix(bpp=f"{row['bpp']:.3f}", psnr=f"{row['psnr_db']:.2f}")
            v = int(value) if float(value).is_integer() else float(value)
            point = {"setting": {codec.setting: v}, "lmbda": None, "quality": None}
            point.update(summarize(per_image))
            point["images"] = per_image
            points.append(point)
    finally:
        bar.close()
    return {
        "schema": SCHEMA, "label": label or codec.name, "kind": "codec", "model": None,
        "codec": {"name": codec.name, "description": codec.description,
                  "library": codec.library(), "setting": codec.setting,
                  "options": codec.options},
        "coder": codec.name, "options": {},
        "dataset": _dataset_info(imgs.paths, dataset_dir, limit),
        "environment": environment(), "points": points,
    }
