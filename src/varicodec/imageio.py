"""The one image loader: files, Pillow images and arrays → 8-bit RGB, and back.

:func:`open_image` accepts every Pillow mode and reports what it had to do:

=================  ============================================================
input              result
=================  ============================================================
RGB, YCbCr, RGBX   RGB
L, 1               gray (``gray=True``; the codec codes it as RGB, returns L)
I;16*, I, F        gray, scaled to 8 bits — with a :class:`VaricodecWarning`
16-bit RGB(A)      8 bits (Pillow keeps the high byte) — with a warning
RGBA, LA, PA, P    colour as above plus the alpha plane (``alpha``), which the
with transparency  codec keeps losslessly
CMYK, LAB, HSV     converted to RGB by Pillow — with a warning (approximate)
EXIF orientation   applied (pixels rotated/flipped, tag dropped)
ICC profile        kept in ``icc`` when it describes the result (RGB or gray); a
                   malformed or mismatched one is dropped with a warning
multi-frame        first frame only — with a warning
=================  ============================================================

Sizes are checked against ``max_pixels`` from the file header, before any
pixel is decoded.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import VaricodecError, VaricodecWarning

if TYPE_CHECKING:  # torch is imported by the functions that need it: `varicodec info` does not
    import torch

__all__ = [
    "SourceImage",
    "load_rgb",
    "open_image",
    "pad_to_multiple",
    "check_size",
    "to_pil",
    "save_image",
    "to_tensor",
    "to_uint8",
]

MAX_SIDE = 65535
MAX_PIXELS = 1 << 28

@dataclass
class SourceImage:
    """An image ready to code: ``rgb`` is ``H×W×3`` uint8 (gray replicated),
    ``alpha`` an ``H×W`` uint8 plane or ``None``, ``icc`` the ICC profile its pixels
    are in (RGB, or gray for a gray image), or ``None`` (sRGB assumed)."""

    rgb: np.ndarray
    gray: bool = False
    alpha: np.ndarray | None = None
    icc: bytes | None = None

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])

    @property
    def mode(self) -> str:
        return ("L" if self.gray else "RGB") + ("A" if self.alpha is not None else "")

    def pixels(self) -> np.ndarray:
        """The colour pixels as the user sees them: ``H×W`` for gray, else ``H×W×3``."""
        return self.rgb[..., 0] if self.gray else self.rgb


#: what the encoder reads: a path, an image file's bytes, a Pillow image, a uint8 array
#: or an image already read
ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray | SourceImage


def _warn(message: str) -> None:
    warnings.warn(message, VaricodecWarning, stacklevel=3)


def check_size(width: int, height: int, max_pixels: int = MAX_PIXELS,
               error: type[Exception] = VaricodecError) -> None:
    """Refuse empty or absurd image sizes (before anything is allocated)."""
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise error(f"image size {width}×{height} is outside 1..{MAX_SIDE} pixels per side")
    if width * height > max_pixels:
        raise error(
            f"image size {width}×{height} ({width * height} pixels) exceeds the limit of "
            f"{max_pixels} pixels"
        )


def _gray_to_uint8(a: np.ndarray, what: str, bits16: bool = False) -> np.ndarray:
    """16-bit / 32-bit / float gray samples → uint8 (with a warning when lossy).

    ``bits16``: the samples are known to be 16-bit (I;16 modes, uint16 arrays);
    otherwise integers above 255 are taken as 16-bit too.
    """
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        scale = 255.0 if a.size and a.max() <= 1.0 else 1.0
        _warn(f"{what}: floating-point samples converted to 8 bits")
        return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)
    a = a.astype(np.int64)
    if bits16 or (a.size and a.max() > 255):
        _warn(f"{what}: 16-bit samples converted to 8 bits")
        return np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    return np.clip(a, 0, 255).astype(np.uint8)


#: colour modes Pillow converts to RGB approximately (with a warning)
_CONVERTED_MODES = ("CMYK", "LAB", "HSV")


def _from_pil(im: Image.Image, what: str, max_pixels: int) -> SourceImage:
    profile = im.info.get("icc_profile")
    src = _pixels_from_pil(im, what, max_pixels)
    if profile and im.mode not in _CONVERTED_MODES:  # their profile is not the result's
        src.icc = _matching_profile(profile, src.gray, what)
    return src


def _matching_profile(profile: bytes, gray: bool, what: str) -> bytes | None:
    """``profile`` if it is a well-formed ICC profile of the image's colour space;
    otherwise ``None``, with a warning (the pixels are then read as sRGB)."""
    from .icc import check_profile

    try:
        space = check_profile(bytes(profile))
    except ValueError as e:
        _warn(f"{what}: {e}; colours read as sRGB")
        return None
    want = "GRAY" if gray else "RGB"
    if space != want:
        _warn(f"{what}: an ICC profile for {space} colours on a {want} image; "
              "colours read as sRGB")
        return None
    return bytes(profile)


def _pixels_from_pil(im: Image.Image, what: str, max_pixels: int) -> SourceImage:
    check_size(*im.size, max_pixels)
    if getattr(im, "n_frames", 1) > 1:
        _warn(f"{what}: {im.n_frames} frames, only the first is coded")
    rawmode = ""  # the file's sample layout, e.g. "RGB;16B" (Pillow keeps only 8 bits)
    tile = getattr(im, "tile", None)
    if tile:
        args = tile[0][3]
        rawmode = args if isinstance(args, str) else str(args[0]) if args else ""
    im.load()
    im = ImageOps.exif_transpose(im)
    mode = im.mode
    if ";16" in rawmode and mode in ("RGB", "RGBA"):
        _warn(f"{what}: 16-bit samples converted to 8 bits")
    if mode in ("1", "L"):
        g = np.asarray(im.convert("L"), dtype=np.uint8)
        return SourceImage(np.repeat(g[..., None], 3, axis=2), gray=True)
    if mode in ("LA", "La"):
        a = np.asarray(im.convert("LA"), dtype=np.uint8)
        return SourceImage(np.repeat(a[..., :1], 3, axis=2), gray=True, alpha=a[..., 1].copy())
    if mode.startswith("I") or mode == "F":
        g = _gray_to_uint8(np.asarray(im), what, bits16=";16" in mode)
        return SourceImage(np.repeat(g[..., None], 3, axis=2), gray=True)
    if mode in ("P", "PA"):
        transparent = mode == "PA" or im.has_transparency_data
        im = im.convert("RGBA" if transparent else "RGB")
        mode = im.mode
    elif mode in _CONVERTED_MODES:
        _warn(f"{what}: {mode} colours converted to RGB (approximately)")
    if mode in ("RGBA", "RGBa"):
        a = np.asarray(im.convert("RGBA"), dtype=np.uint8)
        return SourceImage(np.ascontiguousarray(a[..., :3]), alpha=a[..., 3].copy())
    return SourceImage(np.asarray(im.convert("RGB"), dtype=np.uint8).copy())


def _from_array(a: np.ndarray, max_pixels: int) -> SourceImage:
    what = "array"
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"expected an H×W, H×W×1, ×2, ×3 or ×4 image array, got shape {a.shape}")
    check_size(a.shape[1], a.shape[0], max_pixels)
    if a.dtype != np.uint8:
        if a.dtype not in (np.uint16, np.dtype(bool)) and not np.issubdtype(a.dtype, np.floating):
            raise ValueError(f"expected a uint8 image array, got dtype {a.dtype}")
        a = _gray_to_uint8(a, what, bits16=a.dtype == np.uint16)
    if a.ndim == 2:
        return SourceImage(np.repeat(a[..., None], 3, axis=2), gray=True)
    c = a.shape[2]
    if c == 2:
        return SourceImage(np.repeat(a[..., :1], 3, axis=2), gray=True,
                           alpha=np.ascontiguousarray(a[..., 1]))
    rgb = np.ascontiguousarray(a[..., :3])
    return SourceImage(rgb, alpha=np.ascontiguousarray(a[..., 3]) if c == 4 else None)


def open_image(source: ImageSource, max_pixels: int = MAX_PIXELS,
               name: str = "image data") -> SourceImage:
    """Read a path, an image file's bytes, a Pillow image or a uint8 array (see the
    module table). ``name``: what messages call bytes (e.g. ``"standard input"``).

    Raises :class:`FileNotFoundError` or :class:`VaricodecError` with a
    one-line message for missing files and files that are not images.
    """
    if isinstance(source, SourceImage):  # already read (e.g. with a name for its bytes)
        check_size(source.width, source.height, max_pixels)
        return source
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, Image.Image):
        return _from_pil(source, "image", max_pixels)
    if isinstance(source, bytes | bytearray | memoryview):
        if not len(source):
            raise VaricodecError(f"{name}: empty, not an image")
        return _open(io.BytesIO(source), name, max_pixels)
    path = os.fspath(source)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path}")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder, not an image")
    return _open(path, path, max_pixels)


def _open(fp: str | IO[bytes], path: str, max_pixels: int) -> SourceImage:
    """Decode an image file (a path or a binary stream); ``path`` names it in messages."""
    try:
        with Image.open(fp) as im:
            return _from_pil(im, path, max_pixels)
    except UnidentifiedImageError:
        raise VaricodecError(f"{path}: not an image (or not a format Pillow can read)") from None
    except Image.DecompressionBombError as e:
        raise VaricodecError(f"{path}: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, VaricodecError | FileNotFoundError):
            raise
        raise VaricodecError(f"{path}: cannot read the image ({e})") from None


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an ``H×W×3`` uint8 array (EXIF orientation applied)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VaricodecWarning)
        return open_image(path).rgb


def to_pil(rgb: np.ndarray, gray: bool = False, alpha: np.ndarray | None = None) -> Image.Image:
    """``H×W×3`` uint8 (+ alpha) → Pillow image; ``gray`` averages the channels to L."""
    if gray:
        g = np.rint(rgb.astype(np.float32).mean(axis=2)).astype(np.uint8) if rgb.ndim == 3 else rgb
        if alpha is None:
            return Image.fromarray(g, "L")
        return Image.fromarray(np.dstack([g, alpha]), "LA")
    if alpha is None:
        return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


#: the output formats that store an ICC profile (Pillow's ``icc_profile`` option)
ICC_FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "AVIF")


def save_image(image: Image.Image, fp: str | os.PathLike | IO[bytes],
               fmt: str | None = None) -> None:
    """Write ``image``; the format comes from ``fmt`` or the file extension (PNG lossless).

    An ICC profile in ``image.info["icc_profile"]`` (a decoded file's) is written with it;
    a format that cannot store one gets the pixels with a warning."""
    if fmt is None:
        ext = os.path.splitext(os.fspath(fp))[1].lower() if not hasattr(fp, "write") else ".png"
        fmt = Image.registered_extensions().get(ext)
        if fmt is None:
            raise ValueError(f"unknown image file extension {ext!r} (use .png)")
    if fmt == "JPEG" and image.mode in ("LA", "RGBA"):
        raise ValueError("JPEG cannot hold an alpha channel; write .png instead")
    profile = image.info.get("icc_profile")
    if profile and fmt not in ICC_FORMATS:
        _warn(f"{fmt} cannot hold the image's ICC colour profile: written without it, "
              "so its colours will be read as sRGB (write .png to keep it)")
        profile = None
    image.save(fp, format=fmt, **({"icc_profile": profile} if profile else {}))


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``H×W×3`` uint8 → ``1×3×H×W`` float in [0, 1]."""
    import torch

    rgb = np.require(rgb, np.uint8, ["C_CONTIGUOUS", "WRITEABLE"])  # torch wants writable
    return torch.from_numpy(rgb).permute(2, 0, 1)[None].float().div(255)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """``1×3×H×W`` float in [0, 1] → ``H×W×3`` uint8 (rounded, clamped)."""
    return x[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad ``B×C×H×W`` on the bottom/right to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    import torch

    return torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
