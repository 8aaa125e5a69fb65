"""One image, four codecs at the same file size: what the web page shows.

Our model codes the image first, at the chosen :class:`Target`:

* ``quality`` — our continuous quality (1..8);
* ``bpp`` — our rate control searches λ for that many bits per pixel;
* ``jpeg`` — JPEG 4:2:0 at quality *q* sets the size, our rate control matches it.

Its file size (in ``jpeg`` mode, JPEG's) is then the target of every classical
codec: :func:`match_size` searches the codec's integer quality for the file
closest in bytes to it (bisection; file size grows with quality). Every figure
is measured on the real files: bytes and bpp of the whole file, PSNR and
MS-SSIM (:mod:`varicodec.metrics`) of the decoded 8-bit RGB image against the
input, and the wall time of one encode and one decode at the chosen setting
(searches are not timed; rate-control trials and search steps are reported).

All codecs see the same 8-bit RGB pixels: gray images are replicated to three
channels and an alpha plane is dropped (noted in the result).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

__all__ = ["CLASSICAL", "Comparison", "MatchResult", "Panel", "Target", "compare",
           "gating_report", "match_size"]

#: the classical codecs of the page: registry name → (label, lowest, highest quality)
CLASSICAL = {"jpeg": ("JPEG", 1, 95), "webp": ("WebP", 0, 100), "avif": ("AVIF", 0, 100)}

#: FLOPs are counted on images up to this many pixels (a dense pass of a larger
#: image would need the memory that tiling exists to avoid)
GATING_MAX_PIXELS = 4 << 20

#: the most latent-refinement steps a comparison may ask for (about 0.8 s each per
#: 0.4 MP on 2 cores; the command line allows more)
MAX_REFINE_STEPS = 200

Progress = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    pass


@dataclass(frozen=True)
class Target:
    """What the comparison aims at: ``kind`` ``quality`` (1..8), ``bpp`` (> 0, ≤ 24)
    or ``jpeg`` (JPEG quality 1..95, whose file size everyone matches). ``refine``:
    latent-refinement steps for our encoder (:mod:`varicodec.models.refine`; quality
    target only, as on the command line: refinement codes at one λ)."""

    kind: str
    value: float
    refine: int = 0

    @classmethod
    def parse(cls, kind: str, value: str | float, refine: str | int = 0) -> Target:
        """Validate a target from a form; ``ValueError`` with a one-line reason."""
        try:
            steps = int(str(refine).strip() or 0)
        except ValueError:
            raise ValueError(f"refinement steps must be a whole number, got {refine!r}") from None
        if not 0 <= steps <= MAX_REFINE_STEPS:
            raise ValueError(f"refinement steps must be in 0..{MAX_REFINE_STEPS}, got {steps}")
        ranges = {"quality": (1.0, 8.0), "bpp": (0.0, 24.0), "jpeg": (1.0, 95.0)}
        if kind not in ranges:
            raise ValueError(f"unknown target {kind!r}; choose quality, bpp or jpeg")
        if steps and kind != "quality":
            raise ValueError("refinement codes at one λ: use it with the quality target")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"the {kind} target must be a number, got {value!r}") from None
        lo, hi = ranges[kind]
        if not math.isfinite(v) or not (lo < v <= hi if kind == "bpp" else lo <= v <= hi):
            what = "above 0 and at most 24" if kind == "bpp" else f"between {lo:g} and {hi:g}"
            raise ValueError(f"the {kind} target must be {what}, got {value}")
        return cls(kind, round(v) if kind == "jpeg" else v, steps)

    def label(self) -> str:
        text = {"quality": f"our quality {self.value:g}", "bpp": f"{self.value:g} bpp",
                "jpeg": f"the size of JPEG at quality {self.value:g}"}[self.kind]
        return text + (f", refined ({self.refine} steps)" if self.refine else "")


@dataclass
class Panel:
    """One codec's result. ``data`` is its file, ``decoded`` the decoded RGB pixels."""

    codec: str
    label: str
    setting: str
    bytes: int
    bpp: float
    psnr_db: float
    ms_ssim: float | None
    encode_s: float
    decode_s: float
    extension: str
    note: str | None = None
    data: bytes = field(default=b"", repr=False)
    decoded: np.ndarray | None = field(default=None, repr=False)

    def summary(self) -> dict:
        """The JSON-safe figures (no file, no pixels; ``inf`` PSNR becomes ``None``)."""
        d = asdict(self)
        del d["data"], d["decoded"]
        for k in ("psnr_db", "ms_ssim", "bpp"):
            if d[k] is not None and not math.isfinite(d[k]):
                d[k] = None
        return d


@dataclass
class MatchResult:
    """A classical codec's file at the setting whose size is closest to a target."""

    setting: int
    data: bytes
    encode_s: float
    trials: int
    note: str | None


@dataclass
class Comparison:
    width: int
    height: int
    target: Target
    target_bytes: int
    panels: list[Panel]
    notes: list[str]
    model: dict
    rate_control: dict | None
    seconds: float
    lmbda: float
    gating: dict | None = None

    def summary(self) -> dict:
        return {
            "image": {"width": self.width, "height": self.height},
            "target": {"kind": self.target.kind, "value": self.target.value,
                       "refine": self.target.refine, "label": self.target.label(),
                       "bytes": self.target_bytes},
            "panels": [p.summary() for p in self.panels], "notes": self.notes,
            "model": self.model, "lmbda": self.lmbda, "rate_control": self.rate_control,
            "seconds": self.seconds, "gating": self.gating,
        }


# ------------------------------------------------------------ size matching
def match_size(encode: Callable[[int], bytes], target_bytes: int, lo: int, hi: int,
               on_trial: Callable[[int], None] | None = None) -> MatchResult:
    """Search the integer setting in ``lo..hi`` whose file is closest to ``target_bytes``.

    ``encode(setting)`` returns the file; sizes are assumed non-decreasing in the
    setting (true of JPEG, WebP and AVIF quality up to a few bytes of noise), so a
    bisection finds the largest setting at or under the target and the answer is it
    or the next one up, whichever is closer (ties: the smaller file). Each trial's
    encode is timed; the chosen setting's time is returned.
    """
    tried: dict[int, tuple[bytes, float]] = {}

    def size(q: int) -> int:
        if q not in tried:
            if on_trial is not None:
                on_trial(q)
            t0 = time.perf_counter()
            data = encode(q)
            tried[q] = (data, time.perf_counter() - t0)
        return len(tried[q][0])

    note = None
    if size(lo) >= target_bytes:
        best = lo
        if size(lo) > target_bytes:
            note = f"its smallest file ({size(lo)} bytes) is larger than the target"
    elif size(hi) <= target_bytes:
        best = hi
        if size(hi) < target_bytes:
            note = f"its largest file here ({size(hi)} bytes) is smaller than the target"
    else:
        a, b = lo, hi  # size(a) < target < size(b)... or equal at a: a stays under
        while b - a > 1:
            mid = (a + b) // 2
            if size(mid) <= target_bytes:
                a = mid
            else:
                b = mid
        best = a if target_bytes - size(a) <= size(b) - target_bytes else b
    data, seconds = tried[best]
    return MatchResult(best, data, seconds, len(tried), note)


# ------------------------------------------------------------------ metrics
def _measured(rgb: np.ndarray, decoded: np.ndarray) -> tuple[float, float | None]:
    from ..metrics import ms_ssim, psnr_db

    m = ms_ssim(rgb, decoded)
    return psnr_db(rgb, decoded), (None if math.isnan(m) else m)


def _timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# ------------------------------------------------------------------ compare
def compare(rgb: np.ndarray, model, target: Target, *, codecs: tuple[str, ...] = tuple(CLASSICAL),
            progress: Progress = _no_progress, gating: bool = True) -> Comparison:
    """Code ``rgb`` (``H×W×3`` uint8) with ``model`` and each codec in ``codecs`` at one size.

    ``model`` is a ready :class:`~varicodec.models.VaricodecModel` (eval mode,
    entropy tables present) that no other thread uses during the call.
    ``progress(fraction, message)`` is called as the work advances.
    """
    from ..codec import decode, encode_image
    from ..eval.classical import get_codec

    t_start = time.perf_counter()
    h, w = rgb.shape[:2]
    pixels = w * h
    stages = 3 + len(codecs) + (1 if gating and model.gated else 0)
    done = 0

    def step(message: str, within: float = 0.0) -> None:
        progress(min(1.0, (done + within) / stages), message)

    notes: list[str] = []
    panels: list[Panel] = []
    jpeg_ref: Panel | None = None
    kw: dict = {}
    if target.kind == "jpeg":
        step(f"JPEG at quality {target.value:g}")
        jpeg = get_codec("jpeg")
        q = int(target.value)
        data, enc_s = _timed(lambda: jpeg.encode(rgb, q))
        decoded, dec_s = _timed(lambda: jpeg.decode(data))
        jpeg_ref = _classical_panel("jpeg", rgb, data, decoded, f"quality {q}", enc_s, dec_s,
                                    None)
        kw = {"bpp": len(data) * 8 / pixels}
    elif target.kind == "quality":
        kw = {"quality": target.value}
    else:
        kw = {"bpp": target.value}
    if not model.variable_rate:
        notes.append(f"{model.name} is a fixed-rate model: it codes at its one λ, "
                     "and the other codecs match its size")
        kw = {}

    if target.refine:
        steps = target.refine

        def on_step(i: int, cost: float) -> None:
            step(f"{model.name}: refining the latents, step {i} of {steps}", 0.95 * i / steps)

        kw.update(refine=steps, refine_options={"on_step": on_step})

    # ours: rate control (if any) finds λ; then one timed encode at that λ
    step(f"{model.name}: " + ("refining the latents" if target.refine else "encoding")
         + (" (rate control)" if "bpp" in kw else ""))
    first = encode_image(rgb, model, compute_psnr=False, **kw)
    rc = first.rate_control
    if rc is not None:
        again, enc_s = _timed(lambda: encode_image(rgb, model, lmbda=first.lmbda,
                                                   compute_psnr=False))
        result = again
    else:
        result, enc_s = first, first.seconds
    done += 1
    step(f"{model.name}: decoding")
    image, dec_s = _timed(lambda: decode(result.data, model))
    ours_rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    psnr, msssim = _measured(rgb, ours_rgb)
    from ..quality import lmbda_to_quality

    setting = f"λ {result.lmbda:.4g}"
    if model.variable_rate:
        setting = f"quality {lmbda_to_quality(result.lmbda):.2f}, " + setting
    if target.refine:
        setting += f", refined ({target.refine} steps)"
    note = None
    if rc is not None:
        note = (f"rate control: {rc.iterations} trials in {rc.seconds:.2f} s, "
                f"{rc.achieved:.4g} bpp for {rc.target:.4g}")
        if not rc.converged:
            note += " (target out of reach: closest result)"
    ours = Panel("ours", model.name, setting, len(result.data), len(result.data) * 8 / pixels,
                 psnr, msssim, enc_s, dec_s, "vcd", note, result.data, ours_rgb)
    panels.append(ours)
    done += 1

    target_bytes = len(jpeg_ref.data) if jpeg_ref is not None else ours.bytes
    for name in codecs:
        label, lo, hi = CLASSICAL[name]
        if name == "jpeg" and jpeg_ref is not None:
            panels.append(jpeg_ref)
            done += 1
            continue
        step(f"{label}: matching {target_bytes} bytes")
        try:
            codec = get_codec(name)
        except ValueError as e:  # not supported by this build
            notes.append(str(e))
            done += 1
            continue
        n = 0

        def trial(q: int, label=label) -> None:
            nonlocal n
            n += 1
            step(f"{label}: quality {q} (trial {n})", min(0.9, n / 9))

        m = match_size(lambda q, codec=codec: codec.encode(rgb, q), target_bytes, lo, hi, trial)
        decoded, dec_s = _timed(lambda codec=codec, m=m: codec.decode(m.data))
        note = f"size search: {m.trials} encodes" + (f"; {m.note}" if m.note else "")
        panels.append(_classical_panel(name, rgb, m.data, decoded, f"quality {m.setting}",
                                       m.encode_s, dec_s, note))
        done += 1

    step("metrics")
    done += 1
    comparison = Comparison(
        width=w, height=h, target=target, target_bytes=target_bytes, panels=panels,
        notes=notes, model=_model_info(model),
        rate_control=None if rc is None else {
            "kind": rc.kind, "target": rc.target, "achieved": rc.achieved,
            "trials": rc.iterations, "converged": rc.converged},
        seconds=0.0, lmbda=float(result.lmbda),
    )
    if gating and model.gated:
        step("gating: counting FLOPs")
        comparison.gating = gating_report(model, rgb, result.lmbda)
        done += 1
    comparison.seconds = time.perf_counter() - t_start
    progress(1.0, "done")
    return comparison


def _classical_panel(name: str, rgb: np.ndarray, data: bytes, decoded: np.ndarray,
                     setting: str, enc_s: float, dec_s: float, note: str | None) -> Panel:
    label = CLASSICAL[name][0]
    decoded = np.ascontiguousarray(decoded[..., :3], dtype=np.uint8)
    psnr, msssim = _measured(rgb, decoded)
    ext = {"jpeg": "jpg", "webp": "webp", "avif": "avif"}[name]
    return Panel(name, label, setting, len(data), len(data) * 8 / (rgb.shape[0] * rgb.shape[1]),
                 psnr, msssim, enc_s, dec_s, ext, note, data, decoded)


def _model_info(model) -> dict:
    r = model.lmbda_range
    return {"name": model.name, "gated": bool(model.gated),
            "variable_rate": bool(model.variable_rate),
            "lmbda_range": None if r is None else [r.min, r.max],
            "source": str(getattr(model, "source", "") or "") or None}


# ------------------------------------------------------------------- gating
def gating_report(model, rgb: np.ndarray, lmbda: float,
                  dense_cache: dict | None = None) -> dict:
    """Per-layer sparsity and FLOPs of a gated model at ``lmbda`` on ``rgb``.

    Encoder (``compress``) and decoder (``decompress``) are run under
    :func:`varicodec.eval.flops.count_flops` twice: with the gated convolutions'
    sparse path (what coding executes) and with it off, every input channel
    convolved (the dense cost of the same network). ``model`` must not be in use
    by another thread: the sparse switch is flipped for the second pass. Images
    over :data:`GATING_MAX_PIXELS` get ``{"skipped": reason}``. The dense counts
    depend on the padded image size only (the gates' decisions and λ change no
    convolution's shape), so ``dense_cache`` (a dict kept per model by the caller)
    saves that second pass for sizes seen before.
    """
    import torch

    from ..eval.flops import count_flops
    from ..imageio import pad_to_multiple, to_tensor
    from ..layers import sparse_execution

    if rgb.shape[0] * rgb.shape[1] > GATING_MAX_PIXELS:
        return {"skipped": f"not counted for images over {GATING_MAX_PIXELS} pixels"}
    x = pad_to_multiple(to_tensor(rgb), model.downsampling_factor)
    counts = {}
    sparsity: dict[str, float] = {}
    key = tuple(x.shape)
    if dense_cache is not None and key in dense_cache:
        counts.update(dense_cache[key])
    for mode in ("sparse", "dense"):
        if f"encoder_{mode}" in counts:
            continue
        with sparse_execution(model, enabled=mode == "sparse"), \
                torch.no_grad():  # FlopCounterMode's module tracker needs autograd on
            enc, counts[f"encoder_{mode}"] = count_flops(model.compress, x, lmbda)
            _, counts[f"decoder_{mode}"] = count_flops(
                model.decompress, enc["strings"], enc["shape"], enc["lmbda_code"])
        if mode == "sparse":
            sparsity = model.sparsity()
    if dense_cache is not None:
        if len(dense_cache) >= 256:  # bounded: a few ints per image size
            dense_cache.clear()
        dense_cache[key] = {k: v for k, v in counts.items() if k.endswith("_dense")}
    out: dict = {"lmbda": float(lmbda),
                 "layers": [{"name": n.removeprefix("net."), "sparsity": s}
                            for n, s in sparsity.items()],
                 "mean_sparsity": float(np.mean(list(sparsity.values()))) if sparsity else None}
    for part in ("encoder", "decoder"):
        sparse, dense = counts[f"{part}_sparse"], counts[f"{part}_dense"]
        out[part] = {"flops": sparse, "dense_flops": dense,
                     "saved": 1 - sparse / dense if dense else 0.0,
                     "speedup": dense / sparse if sparse else None}
    return out


def png_bytes(rgb: np.ndarray) -> bytes:
    """A lossless PNG of ``rgb`` (fast compression level: these are served, not stored)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
