"""ICC colour profiles: which ones a ``.vcd`` file carries, and how they are stored.

A photograph from a phone or a camera is often not sRGB: its pixels mean Display P3 or
Adobe RGB colours, and its file says so with an embedded ICC profile. A codec that
codes the pixels but drops the profile makes every such picture look washed out, with
no error. So the encoder keeps the profile of an RGB or gray image whose profile is
*not* equivalent to sRGB (format version 6, docs/FORMAT.md "ICC profile"), and the
decoder attaches it to the image it returns and to the file it writes.

An sRGB profile is dropped: a picture without a profile is read as sRGB anyway, and
the ~3 KB of a typical sRGB profile would be a large part of a small file. "Equivalent
to sRGB" is measured, not read from the profile's name: LittleCMS (Pillow's
``ImageCms``) converts a grid of colours from the profile to sRGB, and the profile is
sRGB-equivalent when no colour moves by more than :data:`SRGB_TOLERANCE` levels. Where
Pillow was built without LittleCMS every valid profile is kept.

Nothing here imports torch: ``varicodec info`` reads profiles too.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np

from .errors import FormatError

__all__ = ["MAX_ICC_BYTES", "SRGB_TOLERANCE", "check_profile", "colour_space", "describe",
           "is_srgb", "pack_icc", "unpack_icc"]

#: the largest profile a file carries (typical ones: 0.5-4 KB; LUT-based up to ~100 KB)
MAX_ICC_BYTES = 1 << 20
#: a profile whose conversion to sRGB moves no grid colour by more than this many
#: levels (of 255) is sRGB-equivalent, and dropped
SRGB_TOLERANCE = 2
_HEADER = 128


def check_profile(data: bytes) -> str:
    """The colour space of a well-formed ICC profile (``"RGB"``, ``"GRAY"``, …);
    ``ValueError`` naming what is wrong otherwise. Checks the header only: the size
    field, the ``acsp`` signature and the size limit."""
    if len(data) < _HEADER + 4:
        raise ValueError(f"ICC profile of {len(data)} bytes is shorter than its header")
    if len(data) > MAX_ICC_BYTES:
        raise ValueError(f"ICC profile of {len(data)} bytes exceeds the {MAX_ICC_BYTES}-byte limit")
    (size,) = struct.unpack_from(">I", data, 0)
    if size != len(data):
        raise ValueError(f"ICC profile declares {size} bytes but holds {len(data)}")
    if data[36:40] != b"acsp":
        raise ValueError("ICC profile without the 'acsp' signature")
    return colour_space(data)


def colour_space(data: bytes) -> str:
    """The profile's data colour space signature, stripped: ``"RGB"``, ``"GRAY"``, …"""
    return data[16:20].decode("latin-1").strip()


def is_srgb(data: bytes) -> bool:
    """Whether the profile maps colours as sRGB does, within :data:`SRGB_TOLERANCE`
    levels over a 16-level grid (every grey level for a gray profile). ``False`` where
    LittleCMS is missing or cannot use the profile."""
    try:
        from PIL import Image, ImageCms

        src = ImageCms.ImageCmsProfile(io.BytesIO(data))
        gray = colour_space(data) == "GRAY"
        if gray:
            grid = np.arange(256, dtype=np.uint8).reshape(16, 16)
            image = Image.fromarray(grid, "L")
        else:
            levels = np.arange(0, 256, 17, dtype=np.uint8)  # 16 levels, 0 … 255
            r, g, b = np.meshgrid(levels, levels, levels, indexing="ij")
            grid = np.stack([r, g, b], -1).reshape(64, 64, 3)
            image = Image.fromarray(grid, "RGB")
        srgb = ImageCms.createProfile("sRGB")
        out = ImageCms.profileToProfile(image, src, srgb, renderingIntent=1, outputMode="RGB")
    except (ImportError, OSError, ValueError, TypeError, AttributeError):
        return False
    got = np.asarray(out, dtype=np.int16)
    want = (grid[..., None] if gray else grid).astype(np.int16)
    return int(np.abs(got - want).max()) <= SRGB_TOLERANCE


def describe(data: bytes) -> str:
    """The profile's description (e.g. "Display P3"), or its colour space where
    LittleCMS cannot read one."""
    try:
        from PIL import ImageCms

        text = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(data)))
    except (ImportError, OSError, ValueError, TypeError, AttributeError):
        text = ""
    return text.strip() or f"{colour_space(data)} profile"


def pack_icc(data: bytes) -> bytes:
    """The stored form of a profile: zlib, level 9."""
    return zlib.compress(data, 9)


def unpack_icc(stream: bytes) -> bytes:
    """Inverse of :func:`pack_icc`, bounded: inflates at most :data:`MAX_ICC_BYTES` + 1
    bytes and demands one complete zlib stream holding a well-formed profile;
    :class:`~varicodec.errors.FormatError` otherwise."""
    d = zlib.decompressobj()
    try:
        data = d.decompress(stream, MAX_ICC_BYTES + 1)
    except zlib.error:
        raise FormatError("corrupted ICC profile stream (not zlib)") from None
    if not d.eof or d.unused_data or d.unconsumed_tail:
        raise FormatError("corrupted ICC profile stream (incomplete, too long or trailing bytes)")
    try:
        check_profile(data)
    except ValueError as e:
        raise FormatError(f"corrupted ICC profile stream ({e})") from None
    return data
