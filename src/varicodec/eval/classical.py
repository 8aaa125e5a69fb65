"""Classical codecs on the same images and metrics as our models.

Each codec is an 8-bit RGB → bytes → 8-bit RGB round trip through the library
installed with the project, and a default sweep of its rate setting chosen to
span roughly 0.1–2 bpp on Kodak (JPEG cannot go much below 0.15 bpp). The rate
is the size of the whole file the library writes (headers included), like ours.

========  ==================  ==============================  ================
name      library             settings                        swept setting
========  ==================  ==============================  ================
jpeg      Pillow (libjpeg)    4:2:0, optimised Huffman        quality 1–95
jpeg444   Pillow (libjpeg)    4:4:4, optimised Huffman        quality 1–95
webp      Pillow (libwebp)    method 6 (slowest, best)        quality 0–100
avif      Pillow (libavif)    4:2:0, speed 6, 1 thread        quality 0–100
          or imagecodecs      (when Pillow lacks AVIF)
jpeg2000  Pillow (OpenJPEG)   9/7, YCbCr (mct), J2K stream    target bpp
jpegxl    imagecodecs (libjxl)  effort 7, 1 thread            distance
========  ==================  ==============================  ================
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, features

__all__ = ["ClassicalCodec", "CODECS", "get_codec", "codec_names"]


@dataclass(frozen=True)
class ClassicalCodec:
    """A classical codec: how to check, encode and decode, and what to sweep.

    ``encode(rgb, value)`` takes an ``H×W×3`` uint8 array and the swept setting's
    value and returns the file's bytes; ``decode(data)`` returns the array.
    """

    name: str
    description: str
    setting: str
    sweep: tuple[float, ...]
    options: dict
    encode: Callable[[np.ndarray, float], bytes]
    decode: Callable[[bytes], np.ndarray]
    check: Callable[[], str | None]
    library: Callable[[], str]


# ------------------------------------------------------------------ Pillow
def _pil_encode(rgb: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _pil_feature(feature: str, what: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            ok = features.check(feature)
        except ValueError:
            ok = False
        return None if ok else f"{what}: this Pillow build has no {feature} support"
    return check


def _pil_library(feature: str) -> Callable[[], str]:
    def library() -> str:
        import PIL

        name = "libjpeg_turbo" if feature == "jpg" and features.check_feature("libjpeg_turbo") \
            else feature
        try:
            lib = features.version(name)
        except ValueError:
            lib = None
        return f"Pillow {PIL.__version__} ({name} {lib or 'unknown version'})"
    return library


def _jpeg(subsampling: int) -> Callable[[np.ndarray, float], bytes]:
    def encode(rgb: np.ndarray, quality: float) -> bytes:
        return _pil_encode(rgb, "JPEG", quality=int(quality), subsampling=subsampling,
                           optimize=True)
    return encode


def _webp(rgb: np.ndarray, quality: float) -> bytes:
    return _pil_encode(rgb, "WEBP", quality=int(quality), method=6)


def _jpeg2000(rgb: np.ndarray, target_bpp: float) -> bytes:
    # OpenJPEG's "rates" are compression ratios against the 24-bit raw image. Pillow
    # leaves the RGB→YCbCr transform (mct) off by default, which costs ~3 dB.
    return _pil_encode(rgb, "JPEG2000", quality_mode="rates",
                       quality_layers=[24.0 / float(target_bpp)], irreversible=True,
                       mct=1, no_jp2=True)


# -------------------------------------------------------------------- AVIF
def _pillow_has_avif() -> bool:
    try:
        return bool(features.check("avif"))
    except ValueError:
        return False


def _imagecodecs_has(name: str) -> bool:
    try:
        import imagecodecs
    except ImportError:
        return False
    codec = getattr(imagecodecs, name, None)
    return bool(codec is not None and codec.available)


def _avif_encode(rgb: np.ndarray, quality: float) -> bytes:
    if _pillow_has_avif():
        return _pil_encode(rgb, "AVIF", quality=int(quality), speed=6, subsampling="4:2:0",
                           max_threads=1)
    import imagecodecs

    return imagecodecs.avif_encode(rgb, level=int(quality), speed=6, numthreads=1)


def _avif_decode(data: bytes) -> np.ndarray:
    if _pillow_has_avif():
        return _pil_decode(data)
    import imagecodecs

    return np.asarray(imagecodecs.avif_decode(data), dtype=np.uint8)[..., :3]


def _avif_check() -> str | None:
    if _pillow_has_avif() or _imagecodecs_has("AVIF"):
        return None
    return "avif: neither Pillow nor imagecodecs in this environment supports AVIF"


def _avif_library() -> str:
    if _pillow_has_avif():
        return _pil_library("avif")()
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__} ({imagecodecs.avif_version()})"


# ----------------------------------------------------------------- JPEG XL
def _jpegxl_encode(rgb: np.ndarray, distance: float) -> bytes:
    import imagecodecs

    return imagecodecs.jpegxl_encode(rgb, distance=float(distance), effort=7, numthreads=1)


def _jpegxl_decode(data: bytes) -> np.ndarray:
    import imagecodecs

    return np.asarray(imagecodecs.jpegxl_decode(data, numthreads=1), dtype=np.uint8)[..., :3]


def _jpegxl_check() -> str | None:
    if _imagecodecs_has("JPEGXL"):
        return None
    return "jpegxl: imagecodecs is missing or was built without JPEG XL (libjxl)"


def _jpegxl_library() -> str:
    import imagecodecs

    return f"imagecodecs {imagecodecs.__version__} ({imagecodecs.jpegxl_version()})"


_JPEG_Q = (1, 3, 5, 8, 12, 18, 25, 35, 50, 65, 80, 90, 95)

CODECS: dict[str, ClassicalCodec] = {
    c.name: c
    for c in (
        ClassicalCodec(
            "jpeg", "JPEG 4:2:0", "quality", _JPEG_Q,
            {"subsampling": "4:2:0", "optimize": True},
            _jpeg(2), _pil_decode, _pil_feature("jpg", "jpeg"), _pil_library("jpg"),
        ),
        ClassicalCodec(
            "jpeg444", "JPEG 4:4:4", "quality", _JPEG_Q,
            {"subsampling": "4:4:4", "optimize": True},
            _jpeg(0), _pil_decode, _pil_feature("jpg", "jpeg444"), _pil_library("jpg"),
        ),
        ClassicalCodec(
            "webp", "WebP", "quality", (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 88, 94),
            {"method": 6},
            _webp, _pil_decode, _pil_feature("webp", "webp"), _pil_library("webp"),
        ),
        ClassicalCodec(
            "avif", "AVIF 4:2:0", "quality", (2, 10, 20, 30, 40, 50, 60, 70, 78, 85),
            {"subsampling": "4:2:0", "speed": 6, "threads": 1},
            _avif_encode, _avif_decode, _avif_check, _avif_library,
        ),
        ClassicalCodec(
            "jpeg2000", "JPEG 2000", "target_bpp",
            (0.06, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0, 1.3, 1.6, 2.0),
            {"wavelet": "9/7 irreversible", "mct": "RGB→YCbCr", "container": "J2K codestream"},
            _jpeg2000, _pil_decode, _pil_feature("jpg_2000", "jpeg2000"),
            _pil_library("jpg_2000"),
        ),
        ClassicalCodec(
            "jpegxl", "JPEG XL", "distance", (25, 15, 10, 7, 5, 3.5, 2.5, 1.8, 1.3, 1.0, 0.7),
            {"effort": 7, "threads": 1},
            _jpegxl_encode, _jpegxl_decode, _jpegxl_check, _jpegxl_library,
        ),
    )
}


def codec_names() -> list[str]:
    return list(CODECS)


def get_codec(name: str) -> ClassicalCodec:
    """The codec called ``name``; ``ValueError`` if unknown or unsupported here."""
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose from {', '.join(CODECS)}")
    codec = CODECS[name]
    problem = codec.check()
    if problem:
        raise ValueError(problem)
    return codec
