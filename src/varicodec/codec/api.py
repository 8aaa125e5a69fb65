"""``encode`` / ``decode`` / ``info``: images ⇄ ``.vcd`` bytes.

An image is read by :func:`varicodec.imageio.open_image` (every Pillow mode,
EXIF orientation), replicate-padded on the bottom/right to the model's
multiple of 64 pixels, coded, and cropped back after decoding. Gray images are
coded as RGB (three equal channels) and decoded back to L (mean of the three
decoded channels). Alpha is kept losslessly: left-difference filtered,
zlib-compressed; a fully opaque alpha plane is stored as an empty stream.
"""

from __future__ import annotations

import contextlib
import math
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import FormatError, ModelMismatchError, VaricodecError
from ..imageio import (
    MAX_PIXELS,
    ImageSource,
    SourceImage,
    open_image,
    pad_to_multiple,
    to_pil,
    to_tensor,
    to_uint8,
)
from ..metrics import psnr_db
from ..models import VaricodecModel
from ..models.guard import guard_is_hash_mode
from ..models.refine import check_refinable, check_steps, fixed_latents, refine_latents
from ..models.registry import bundled_weights
from ..quality import quality_to_lmbda
from ..util import trim_freed_memory
from .format import HASH_GUARD_VERSION, Container
from .header import info
from .pretrained import ModelSpec, fingerprint, resolve_model
from .rate_control import RateControlReport, RateTargetError, check_tolerance, search_lmbda_code
from .tiles import DEFAULT_MARGIN, Tile, TiledFile, choose_tile, is_tiled, tile_grid

__all__ = ["DEFAULT_QUALITY", "EncodeResult", "decode", "decode_image", "encode",
           "encode_image", "info"]

#: quality used when a variable-rate model is given no rate option
DEFAULT_QUALITY = 5.0


@dataclass
class EncodeResult:
    """One encoded image and what it cost. ``psnr_db`` is of the decoded output
    against the input (colour or gray channels; alpha is lossless)."""

    data: bytes
    width: int
    height: int
    mode: str
    model: str
    lmbda: float
    lmbda_code: int | None
    psnr_db: float | None
    seconds: float
    overhead_bytes: int
    rate_control: RateControlReport | None = None
    #: bytes of the ICC profile the file carries (0: none; sRGB is never carried)
    icc_bytes: int = 0

    @property
    def bpp(self) -> float:
        """Real bits per pixel: whole file × 8 / (width × height)."""
        return len(self.data) * 8 / (self.width * self.height)


# ----------------------------------------------------------------- helpers
def _pack_alpha(alpha: np.ndarray | None) -> bytes | None:
    if alpha is None:
        return None
    if bool((alpha == 255).all()):
        return b""
    filtered = np.diff(alpha, axis=1, prepend=np.uint8(0)).astype(np.uint8)
    return zlib.compress(filtered.tobytes(), 9)


def _unpack_alpha(data: bytes | None, width: int, height: int) -> np.ndarray | None:
    if data is None:
        return None
    if not data:
        return np.full((height, width), 255, np.uint8)
    n = width * height
    try:
        d = zlib.decompressobj()
        raw = d.decompress(data, n + 1)  # never inflates past the declared size
        ok = len(raw) == n and d.eof and not d.unused_data and not d.unconsumed_tail
    except zlib.error:
        ok = False
    if not ok:
        raise FormatError("corrupted alpha stream")
    filtered = np.frombuffer(raw, np.uint8).reshape(height, width)
    return np.cumsum(filtered, axis=1, dtype=np.uint8)


def _stored_icc(src: SourceImage, keep: bool) -> bytes | None:
    """The ICC profile stream a file of ``src`` carries: its profile, compressed,
    unless there is none, ``keep`` is off or the profile is sRGB-equivalent
    (:mod:`varicodec.icc`)."""
    from ..icc import is_srgb, pack_icc

    if not keep or src.icc is None or is_srgb(src.icc):
        return None
    return pack_icc(src.icc)


def _z_shape(model: VaricodecModel, width: int, height: int) -> tuple[int, int]:
    f = model.downsampling_factor
    return (-(-height // f), -(-width // f))


def _choose_lmbda(model: VaricodecModel, lmbda, quality) -> float | None:
    """λ for a fixed-λ encode (``None`` for a fixed-rate model)."""
    if not model.variable_rate:
        if quality is not None or (lmbda is not None and abs(lmbda - model.lmbda) > 1e-12):
            raise ValueError(
                f"{model.name} is a fixed-rate model (lambda {model.lmbda:g}); "
                "it takes no rate option"
            )
        return None
    assert model.lmbda_range is not None
    if lmbda is None:
        lmbda = quality_to_lmbda(DEFAULT_QUALITY if quality is None else quality)
    return model.lmbda_range.check(lmbda)


def _check_refine(refine, bpp, psnr) -> None:
    check_steps(refine)
    if refine and (bpp is not None or psnr is not None):
        raise ValueError("refinement codes at one lambda: give a quality or lambda, "
                         "not a bpp/psnr target")


def _check_rate_options(lmbda, quality, bpp, psnr, tolerance=None) -> None:
    given = [n for n, v in (("lmbda", lmbda), ("quality", quality), ("bpp", bpp),
                            ("psnr", psnr)) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give at most one rate option, got {', '.join(given)}")
    for name, v in (("lmbda", lmbda), ("bpp", bpp), ("psnr", psnr)):
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v}")
    if quality is not None:
        quality_to_lmbda(quality)  # range check
    if tolerance is not None:
        if bpp is None and psnr is None:
            raise ValueError("a tolerance applies to a bpp or psnr target only")
        check_tolerance("bpp" if bpp is not None else "psnr", tolerance)


class _Coder:
    """One image and one model: code at a λ, measure the result."""

    def __init__(self, model: VaricodecModel, src: SourceImage, refine: int = 0,
                 progress: bool = False, refine_options: dict | None = None,
                 icc: bytes | None = None) -> None:
        self.model, self.src, self.icc = model, src, icc
        self.refine, self.progress = refine, progress
        self.refine_options = refine_options or {}
        self.fp = fingerprint(model)
        device = next(model.parameters()).device   # a model on a GPU codes there
        self.x = pad_to_multiple(to_tensor(src.rgb), model.downsampling_factor).to(device)
        self.alpha = _pack_alpha(src.alpha)
        self.shape = _z_shape(model, src.width, src.height)

    def code(self, lmbda: float | None = None, code: int | None = None) -> Container:
        m = self.model
        if code is not None:
            assert m.lmbda_range is not None
            lmbda = m.lmbda_range.decode(code)
        if self.refine:
            out = self._refined(lmbda)
        else:
            out = m.compress(self.x, lmbda)
        if tuple(out["shape"]) != self.shape:
            raise VaricodecError(f"{m.name}: unexpected hyper-latent shape {out['shape']}")
        s = out["strings"]
        return Container(
            model_name=m.name, fingerprint=self.fp, width=self.src.width,
            height=self.src.height, y=s[0][0], z=s[1][0], side=s[2][0] if m.gated else b"",
            alpha=self.alpha, gray=self.src.gray, lmbda_code=out["lmbda_code"], guard=s[-1][0],
            icc=self.icc,
        )

    def _refined(self, lmbda: float | None) -> dict:
        """``compress`` with latents refined for this image (:mod:`varicodec.models.refine`)."""
        m = self.model
        used = m.lmbda if lmbda is None else m.lmbda_range.coded(lmbda)
        r = refine_latents(m, self.x, used, self.refine, progress=self.progress,
                           size=(self.src.height, self.src.width), **self.refine_options)
        with fixed_latents(m, r.y, r.z):
            return m.compress(self.x, lmbda)

    def searching(self):
        """Context for a rate-control search: ``g_a`` runs once for all trials."""
        return self.model.cached_analysis(self.x)

    def bpp(self, c: Container) -> float:
        return len(c.pack()) * 8 / (self.src.width * self.src.height)

    def psnr(self, c: Container) -> float:
        rgb = _reconstruct(self.model, c)
        out = to_pil(rgb, gray=c.gray)
        return psnr_db(np.asarray(out), self.src.pixels())


def _guarded(stream: bytes, n_symbols: int) -> bytes:
    """``stream`` followed by zeros that a damaged stream's decoding may read.

    CompressAI's rANS decoder does not bounds-check its reads: a damaged or
    crafted stream (with a valid CRC) can make it read past its buffer, up to
    about one 32-bit word per symbol in normal decoding and ~7.5 bytes per
    stream byte in its escape ("bypass") mode, and crash the process. With this
    padding those reads land in zeros, which also end every escape sequence.
    Valid streams never read it.
    """
    return stream + bytes(64 + 16 * len(stream) + 8 * n_symbols)


def _reconstruct(model: VaricodecModel, c: Container) -> np.ndarray:
    """Entropy-decode and synthesise: ``H×W×3`` uint8 (cropped)."""
    zh, zw = _z_shape(model, c.width, c.height)
    n_z = model.config["N"] * zh * zw
    n_y = model.config["M"] * zh * zw * 16  # y is 4× finer than z in each direction
    strings = [[_guarded(c.y, n_y)], [_guarded(c.z, n_z)]] + ([[c.side]] if model.gated else [])
    if c.guard is not None:  # format version 2 on: explicit indexes and the symbol check
        if c.version < HASH_GUARD_VERSION and guard_is_hash_mode(c.guard):
            raise FormatError(f"corrupted file: a version {c.version} file holds a hash-mode "
                              f"guard stream, which only version {HASH_GUARD_VERSION} writes")
        strings.append([c.guard])
    try:
        out = model.decompress(strings, (zh, zw), c.lmbda_code, order=c.coding_order,
                               absolute_margin=c.absolute_margin)
    except (ValueError, RuntimeError, IndexError, OverflowError) as e:
        raise FormatError(f"cannot decode the entropy-coded streams ({e})") from None
    x_hat = out["x_hat"][..., : c.height, : c.width]
    bad = int((~torch.isfinite(x_hat)).sum())
    if bad:  # never a silent 0: a model that computes NaN gives no picture
        raise VaricodecError(f"the decoded image has {bad} non-finite values (NaN or inf): "
                             "the model's arithmetic failed, so no picture is returned")
    return to_uint8(x_hat)


# ------------------------------------------------------------------- encode
def encode_image(
    image: ImageSource,
    model: ModelSpec = None,
    *,
    lmbda: float | None = None,
    quality: float | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
    tolerance: float | None = None,
    compute_psnr: bool = True,
    max_pixels: int = MAX_PIXELS,
    strict: bool = False,
    tile: int | str | None = "auto",
    tile_margin: int = DEFAULT_MARGIN,
    refine: int = 0,
    progress: bool = False,
    refine_options: dict | None = None,
    keep_icc: bool = True,
) -> EncodeResult:
    """Encode ``image`` and report rate, distortion and rate control.

    At most one rate option: ``lmbda`` (the model's trade-off factor),
    ``quality`` (continuous 1..8, CompressAI's λ ladder), ``bpp`` or ``psnr``
    (rate control; variable-rate models only). A variable-rate model given
    none uses :data:`DEFAULT_QUALITY`; a fixed-rate model takes none.
    ``tolerance``: for ``bpp`` relative, in (0, 1) (default 0.02); for ``psnr``
    in dB, > 0 (default 0.1). A target out of reach gives the closest result
    and ``rate_control.converged = False``; with ``strict`` it raises
    :class:`RateTargetError` instead.
    ``tile``: ``"auto"`` codes images over 4 Mpx as independent 992-pixel tiles
    with 16-pixel margins (bounded memory, :mod:`.tiles`), ``0``/``None`` never
    tiles, a number ≥ 64 sets the tile side; ``tile_margin`` (0..255 pixels)
    the context each tile is coded with.
    ``refine``: gradient steps that tune this image's latents before coding
    (:mod:`varicodec.models.refine`; slower encode, same decoder; ``0`` off; not with
    a bpp/psnr target); ``progress`` shows their progress on stderr;
    ``refine_options``: keyword arguments of :func:`~varicodec.models.refine.refine_latents`
    (``lr``, ``seed``, ``rounding``; for experiments).
    ``keep_icc``: carry the image's ICC colour profile (format version 6), unless it is
    sRGB-equivalent (:mod:`varicodec.icc`); ``False`` drops it (the colours are then
    read as sRGB).
    """
    t0 = time.perf_counter()
    _check_rate_options(lmbda, quality, bpp, psnr, tolerance)
    _check_refine(refine, bpp, psnr)
    choose_tile(64, 64, tile)  # validate before reading the image
    if not 0 <= tile_margin <= 255:
        raise ValueError(f"tile margin must be 0..255 pixels, got {tile_margin}")
    src = open_image(image, max_pixels)
    m = resolve_model(model)
    if (bpp is not None or psnr is not None) and not m.variable_rate:
        raise ValueError(
            f"rate control (bpp/psnr targets) needs a variable-rate model; "
            f"{m.name} is fixed-rate"
        )
    if refine:
        check_refinable(m)
    side = choose_tile(src.width, src.height, tile)
    icc = _stored_icc(src, keep_icc)
    coder = (_Coder(m, src, refine, progress, refine_options, icc) if side is None
             else _TiledCoder(m, src, side, tile_margin, refine, progress, refine_options, icc))
    return _encode_with(coder, m, src, lmbda=lmbda, quality=quality, bpp=bpp, psnr=psnr,
                        tolerance=tolerance, strict=strict, compute_psnr=compute_psnr, t0=t0)


def _encode_with(coder: _Coder | _TiledCoder, m: VaricodecModel, src: SourceImage, *, lmbda,
                 quality, bpp, psnr, tolerance, strict: bool, compute_psnr: bool,
                 t0: float) -> EncodeResult:
    """Code with ``coder`` (one piece or tiles) at λ / quality, or search a bpp/PSNR target."""
    report = None
    with torch.inference_mode():
        if bpp is not None or psnr is not None:
            assert m.lmbda_range is not None
            kind, target = ("bpp", bpp) if bpp is not None else ("psnr", psnr)
            metric = coder.bpp if kind == "bpp" else coder.psnr
            coded: dict[int, Container | TiledFile] = {}

            def measure(code: int) -> float:  # tiled: every trial codes every tile again
                coded[code] = coder.code(code=code)
                return metric(coded[code])

            with coder.searching():
                report = search_lmbda_code(measure, kind, float(target), m.lmbda_range,
                                           tolerance)
            if strict and not report.converged:
                raise RateTargetError(report)
            result = coded[report.code]
        else:
            result = coder.code(_choose_lmbda(m, lmbda, quality))
        data = result.pack()
        quality_db = None
        if report is not None and report.kind == "psnr":
            quality_db = report.achieved
        elif compute_psnr:
            quality_db = coder.psnr(result)
    lm = m.lmbda if result.lmbda_code is None else m.lmbda_range.decode(result.lmbda_code)
    return EncodeResult(
        data=data, width=src.width, height=src.height, mode=src.mode, model=m.name, lmbda=lm,
        lmbda_code=result.lmbda_code, psnr_db=quality_db, seconds=time.perf_counter() - t0,
        overhead_bytes=result.overhead, rate_control=report,
        icc_bytes=0 if result.icc is None else len(result.icc),
    )


def _crop(src: SourceImage, rect: tuple[int, int, int, int]) -> SourceImage:
    """The pixels of ``src`` in ``rect``; its ICC profile goes in the tiled file's
    outer header, not in each tile."""
    y0, y1, x0, x1 = rect
    return SourceImage(rgb=src.rgb[y0:y1, x0:x1], gray=src.gray,
                       alpha=None if src.alpha is None else src.alpha[y0:y1, x0:x1])


def _core(t: Tile, a: np.ndarray) -> np.ndarray:
    """The core of tile ``t`` out of its coded rectangle ``a`` (rows × columns × …)."""
    oy, ox = t.offset
    return a[oy:oy + t.core[1] - t.core[0], ox:ox + t.core[3] - t.core[2]]


class _TiledCoder:
    """One image cut into tiles (:mod:`.tiles`); each tile a :class:`_Coder` in turn."""

    def __init__(self, model: VaricodecModel, src: SourceImage, side: int, margin: int,
                 refine: int = 0, progress: bool = False,
                 refine_options: dict | None = None, icc: bytes | None = None) -> None:
        self.model, self.src, self.side, self.margin = model, src, side, margin
        self.icc = icc
        self.refine, self.progress, self.refine_options = refine, progress, refine_options
        self.grid = tile_grid(src.width, src.height, side, margin)

    def code(self, lmbda: float | None = None, code: int | None = None) -> TiledFile:
        # one tile's tensors at a time: that is the point of tiling
        tiles = []
        for t in self.grid:
            coder = _Coder(self.model, _crop(self.src, t.coded), self.refine, self.progress,
                           self.refine_options)
            tiles.append(coder.code(lmbda, code).pack())
            trim_freed_memory()
        m = self.model
        return TiledFile(model_name=m.name, fingerprint=fingerprint(m),
                         width=self.src.width, height=self.src.height, gray=self.src.gray,
                         alpha=self.src.alpha is not None,
                         lmbda_code=Container.unpack(tiles[0]).lmbda_code, tile=self.side,
                         margin=self.margin, tiles=tiles, icc=self.icc)

    def searching(self):
        """Context for a rate-control search (each trial codes every tile again)."""
        return contextlib.nullcontext()

    def bpp(self, f: TiledFile) -> float:
        return len(f.pack()) * 8 / (self.src.width * self.src.height)

    def psnr(self, f: TiledFile) -> float:
        """PSNR over the whole image, from each core's squared error."""
        sse = 0.0
        for t, data in zip(self.grid, f.tiles):
            c = Container.unpack(data)
            decoded = np.asarray(to_pil(_core(t, _reconstruct(self.model, c)), gray=c.gray))
            reference = _core(t, self.src.pixels()[t.coded[0]:t.coded[1], t.coded[2]:t.coded[3]])
            db = psnr_db(reference, decoded)
            sse += 0.0 if math.isinf(db) else reference.size * 255.0**2 / 10 ** (db / 10)
            trim_freed_memory()
        mse = sse / self.src.pixels().size
        return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def encode(
    image: ImageSource,
    model: ModelSpec = None,
    *,
    lmbda: float | None = None,
    quality: float | None = None,
    bpp: float | None = None,
    psnr: float | None = None,
    refine: int = 0,
) -> bytes:
    """Compress ``image`` (a path, an image file's bytes, a Pillow image or an ``H×W×3``
    uint8 array) to ``.vcd`` bytes.

    ``model``: a :class:`VaricodecModel`, a registry name, a ``.safetensors``
    path or ``None`` (bundled ``hyperprior-ecgbm``). Rate options and ``refine`` as
    in :func:`encode_image`.
    """
    return encode_image(image, model, lmbda=lmbda, quality=quality, bpp=bpp, psnr=psnr,
                        compute_psnr=False, refine=refine).data


# ------------------------------------------------------------------- decode
def _model_for(c: Container, model: ModelSpec) -> VaricodecModel:
    """The model that wrote ``c``; :class:`ModelMismatchError` for any other."""
    if model is None:
        path = bundled_weights(c.model_name)
        if path is None:
            raise ModelMismatchError(
                f"the file was written by model {c.model_name!r} "
                f"(weights {c.fingerprint.hex()}), which is not bundled; "
                "pass --model PATH to its weights"
            )
        model = path
    m = resolve_model(model)
    if m.name != c.model_name:
        raise ModelMismatchError(
            f"the file was written by model {c.model_name!r}, not {m.name!r}"
        )
    fp = fingerprint(m)
    if fp != c.fingerprint:
        raise ModelMismatchError(
            f"the file was written by other {c.model_name} weights "
            f"({c.fingerprint.hex()}, these are {fp.hex()})"
        )
    return m


def _check_padded(m: VaricodecModel, c: Container, max_pixels: int) -> None:
    zh, zw = _z_shape(m, c.width, c.height)
    f = m.downsampling_factor
    if zh * zw * f * f > max_pixels:  # what the model processes: the padded image
        raise FormatError(
            f"image size {c.width}×{c.height} pads to {zw * f}×{zh * f} pixels, over the "
            f"limit of {max_pixels}"
        )


def decode_image(data: bytes, model: ModelSpec = None, *,
                 max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, Container | TiledFile]:
    """:func:`decode`, also returning the parsed container (a :class:`TiledFile` if tiled)."""
    if is_tiled(data):
        return _decode_tiled(TiledFile.unpack(data, max_pixels), model, max_pixels)
    c = Container.unpack(data, max_pixels)
    m = _model_for(c, model)
    _check_padded(m, c, max_pixels)
    with torch.inference_mode():
        rgb = _reconstruct(m, c)
    image = to_pil(rgb, gray=c.gray, alpha=_unpack_alpha(c.alpha, c.width, c.height))
    return _with_profile(image, c.icc_profile()), c


def _with_profile(image: Image.Image, profile: bytes | None) -> Image.Image:
    """``image`` with the file's ICC profile in ``info["icc_profile"]``, where Pillow
    looks for it when saving (:func:`varicodec.imageio.save_image` writes it)."""
    if profile is not None:
        image.info["icc_profile"] = profile
    return image


def _decode_tiled(f: TiledFile, model: ModelSpec,
                  max_pixels: int) -> tuple[Image.Image, TiledFile]:
    """Decode tile by tile into one image; every tile must match the outer header."""
    m = _model_for(f, model)
    rgb = np.empty((f.height, f.width, 3), np.uint8)
    alpha = np.empty((f.height, f.width), np.uint8) if f.alpha else None
    with torch.inference_mode():
        for i, (t, data) in enumerate(zip(f.grid(), f.tiles)):
            c = Container.unpack(data, max_pixels)
            y0, y1, x0, x1 = t.coded
            if ((c.model_name, c.fingerprint, c.lmbda_code, c.gray, c.alpha is not None)
                    != (f.model_name, f.fingerprint, f.lmbda_code, f.gray, f.alpha)
                    or (c.width, c.height) != (x1 - x0, y1 - y0)):
                raise FormatError(f"corrupted file (tile {i} does not match the header)")
            _check_padded(m, c, max_pixels)
            cy0, cy1, cx0, cx1 = t.core
            rgb[cy0:cy1, cx0:cx1] = _core(t, _reconstruct(m, c))
            trim_freed_memory()
            if alpha is not None:
                alpha[cy0:cy1, cx0:cx1] = _core(t, _unpack_alpha(c.alpha, c.width, c.height))
    return _with_profile(to_pil(rgb, gray=f.gray, alpha=alpha), f.icc_profile()), f


def decode(data: bytes, model: ModelSpec = None, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decompress ``.vcd`` bytes to a Pillow image (mode RGB, L, RGBA or LA).

    ``model`` defaults to the bundled weights named in the file. Raises
    :class:`FormatError` for damaged files and :class:`ModelMismatchError`
    for weights other than those that wrote the file. ``max_pixels`` refuses
    larger images before decoding anything; it bounds both ``W·H`` and the
    padded area the model processes (multiples of 64 on each side).
    """
    return decode_image(data, model, max_pixels=max_pixels)[0]
