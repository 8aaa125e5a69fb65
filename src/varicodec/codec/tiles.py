"""Tiled files: a large image coded as independent tiles, for bounded memory.

A model's activations grow with the image (about 0.4 GiB per megapixel for the
full-size models), so a large image is cut into a grid of ``tile × tile``
cores and each core, widened by ``margin`` pixels of its neighbours on every
inner side, is coded as an ordinary ``.vcd`` image on its own. The decoder
decodes one tile at a time and keeps only its core, so memory depends on the
tile size, not on the image. The margins give each core the context it would
have had in one piece; without them the transforms' zero/replicate padding
shows at the seams (``docs/results/startup.md`` measures PSNR at the borders
against the interior).

Layout (``docs/FORMAT.md``, "Tiled files"): the fixed 18-byte header of the
``.vcd`` format with flag bit 3 (tiled) set and bits 0-1 as the image's (gray,
alpha), the λ code of a variable-rate model, then ``tile`` (2 bytes),
``margin`` (1 byte), the tile count (varint), with flag bit 4 (version 6 on) the
image's ICC profile (``varint length + zlib stream``, :mod:`varicodec.icc`), and for
each tile, row-major, ``varint length + a complete .vcd file`` of the widened tile
(its own header and CRC; same model, weights and λ code; no profile), then the CRC-32
of everything before.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from ..errors import FormatError
from ..icc import unpack_icc
from ..imageio import MAX_PIXELS
from .format import (
    _FIXED,
    FLAG_ALPHA,
    FLAG_GRAY,
    FLAG_ICC,
    MAGIC,
    MODEL_IDS,
    READABLE_VERSIONS,
    file_version,
    optional_flags,
    read_fixed_fields,
    read_varint,
    write_varint,
)

__all__ = ["FLAG_TILED", "DEFAULT_TILE", "DEFAULT_MARGIN", "AUTO_TILE_PIXELS", "TiledFile",
           "is_tiled", "tile_grid", "choose_tile"]

FLAG_TILED = 8
#: tile side and margin used when tiling is on (pixels): an inner tile is coded as
#: 992 + 2·16 = 1024 pixels square, a multiple of the models' 64, so no padding is coded
DEFAULT_TILE = 992
DEFAULT_MARGIN = 16
#: images with more pixels than this are tiled unless told otherwise (``tile="auto"``)
AUTO_TILE_PIXELS = 4 * 1024 * 1024


@dataclass(frozen=True)
class Tile:
    """One tile: its core (kept) and its coded rectangle (core + margins), pixels."""

    core: tuple[int, int, int, int]  # y0, y1, x0, x1
    coded: tuple[int, int, int, int]

    @property
    def offset(self) -> tuple[int, int]:
        """Where the core starts inside the coded rectangle (rows, columns)."""
        return self.core[0] - self.coded[0], self.core[2] - self.coded[2]


def tile_grid(width: int, height: int, tile: int, margin: int) -> list[Tile]:
    """The tiles of a ``width × height`` image, row-major."""
    tiles = []
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            coded = (max(0, y0 - margin), min(height, y1 + margin),
                     max(0, x0 - margin), min(width, x1 + margin))
            tiles.append(Tile((y0, y1, x0, x1), coded))
    return tiles


def choose_tile(width: int, height: int, tile: int | str | None) -> int | None:
    """The tile side to use: ``None`` (one piece) or a number of pixels ≥ 64.

    ``tile``: ``"auto"`` (tile images over :data:`AUTO_TILE_PIXELS` at
    :data:`DEFAULT_TILE`), ``None`` or ``0`` (never), or a side in pixels (≥ 64).
    """
    if tile == "auto":
        return DEFAULT_TILE if width * height > AUTO_TILE_PIXELS else None
    if tile is None or tile == 0:
        return None
    if isinstance(tile, str) or not 64 <= tile <= 65535:
        raise ValueError(f"tile size must be 'auto', 0 or 64..65535 pixels, got {tile}")
    return int(tile) if width > tile or height > tile else None


def is_tiled(data: bytes) -> bool:
    """Whether ``data`` starts like a tiled ``.vcd`` file (checked fully by ``unpack``)."""
    return len(data) > 4 and data[:3] == MAGIC and bool(data[4] & FLAG_TILED)


@dataclass(frozen=True)
class TiledFile:
    """A tiled file's outer header and its tiles' ``.vcd`` bytes (row-major); ``icc``:
    the image's zlib-compressed ICC profile, or ``None``; ``version`` ``None`` (the
    default) is the lowest that holds the file (:func:`~.format.file_version`)."""

    model_name: str
    fingerprint: bytes
    width: int
    height: int
    gray: bool
    alpha: bool
    lmbda_code: int | None
    tile: int
    margin: int
    tiles: list[bytes]
    icc: bytes | None = None
    version: int = None  # type: ignore[assignment]  # set in __post_init__

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", file_version(self.icc, self.version))

    def icc_profile(self) -> bytes | None:
        """The ICC profile the image was encoded with (inflated), or ``None``."""
        return None if self.icc is None else unpack_icc(self.icc)

    @property
    def mode(self) -> str:
        return ("L" if self.gray else "RGB") + ("A" if self.alpha else "")

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def grid(self) -> list[Tile]:
        return tile_grid(self.width, self.height, self.tile, self.margin)

    def header(self) -> bytes:
        flags = FLAG_TILED | (FLAG_GRAY * self.gray) | (FLAG_ALPHA * self.alpha) \
            | (FLAG_ICC * (self.icc is not None))
        out = bytearray(_FIXED.pack(MAGIC, self.version, flags, MODEL_IDS[self.model_name],
                                    self.fingerprint, self.width, self.height))
        if self.lmbda_code is not None:
            out += struct.pack(">H", self.lmbda_code)
        out += struct.pack(">HB", self.tile, self.margin) + write_varint(len(self.tiles))
        return bytes(out)

    @property
    def overhead(self) -> int:
        """Outer header, length fields and CRC (each tile's own header is in ``tiles``)."""
        icc = 0 if self.icc is None else len(write_varint(len(self.icc)))
        return len(self.header()) + icc + sum(len(write_varint(len(t))) for t in self.tiles) + 4

    def pack(self) -> bytes:
        parts = [self.header()]
        if self.icc is not None:
            parts += [write_varint(len(self.icc)), self.icc]
        for t in self.tiles:
            parts += [write_varint(len(t)), t]
        body = b"".join(parts)
        return body + struct.pack(">I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes, max_pixels: int = MAX_PIXELS) -> TiledFile:
        """Parse and verify the outer layer; each tile is checked when it is decoded."""
        data = bytes(data)
        end = len(data) - 4
        if end < _FIXED.size + 4 or not is_tiled(data):
            raise FormatError("file is truncated (shorter than a tiled .vcd header)")
        version = data[3]
        if version not in READABLE_VERSIONS or version < 2:
            raise FormatError(f"tiled file with format version {version} (needs 2 or newer "
                              f"than this varicodec reads)")
        flags, name, fp, width, height, code, pos = read_fixed_fields(
            data, end, FLAG_TILED | FLAG_GRAY | FLAG_ALPHA | optional_flags(version), max_pixels)
        if pos + 3 > end:
            raise FormatError("file is truncated (inside the header)")
        tile, margin = struct.unpack_from(">HB", data, pos)
        pos += 3
        if tile < 64:
            raise FormatError(f"corrupted header (tile size {tile})")
        count, pos = read_varint(data, pos, end)
        expected = math.ceil(width / tile) * math.ceil(height / tile)
        if count != expected:
            raise FormatError(f"corrupted header ({count} tiles for a {width}×{height} image "
                              f"in {tile}-pixel tiles; expected {expected})")
        icc = None
        if flags & FLAG_ICC:
            n, pos = read_varint(data, pos, end)
            if pos + n > end:
                raise FormatError("file is truncated (inside the ICC profile)")
            icc = data[pos:pos + n]
            pos += n
        tiles = []
        for _ in range(count):
            n, pos = read_varint(data, pos, end)
            if pos + n > end:
                raise FormatError("file is truncated (inside a tile)")
            tiles.append(data[pos:pos + n])
            pos += n
        if pos != end:
            raise FormatError("corrupted file (bytes after the last tile)")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[:end]) != crc:
            raise FormatError("file is corrupted or truncated (CRC-32 mismatch)")
        f = cls(version=version, model_name=name, fingerprint=fp, width=width,
                height=height, gray=bool(flags & FLAG_GRAY), alpha=bool(flags & FLAG_ALPHA),
                lmbda_code=code, tile=tile, margin=margin, tiles=tiles, icc=icc)
        f.icc_profile()  # a malformed profile stream is a damaged file, found here
        return f

    def stream_sizes(self) -> dict[str, int]:
        """Total bytes per stream kind over all tiles (each tile's own header excluded)."""
        from .format import Container

        sizes: dict[str, int] = {}
        for t in self.tiles:
            for k, v in Container.unpack(t, MAX_PIXELS).stream_sizes().items():
                sizes[k] = sizes.get(k, 0) + v
        if self.icc is not None:
            sizes["icc"] = len(self.icc)
        return sizes
