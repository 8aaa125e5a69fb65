"""The ``.vcd`` container: one compressed image in one byte string.

Layout (all integers big-endian; ``varint`` = unsigned LEB128, at most 5 bytes)::

    offset  size  field
    0       3     magic  b"VCD"
    3       1     format version (6 with an ICC profile, else 5; versions 1 to 4 are still read)
    4       1     flags: bit 0 gray, bit 1 alpha, bit 2 gate side stream, bit 4 ICC
                  profile (version 6 on); bit 3 tiled (codec.tiles); bits 5-7 zero
    5       1     model id (registry name, table MODEL_IDS)
    6       8     weights fingerprint (varicodec.models.weights_fingerprint)
    14      2     image width  in pixels, 1..65535
    16      2     image height in pixels, 1..65535
    18      2     λ code, 0..65535            only for variable-rate models (bm, ecgbm)
    ..      v     len(z)                         varint
    ..      1     len(side)                      only if flag bit 2; 1..255
    ..      v     len(alpha)                     only if flag bit 1; varint
    ..      v     len(guard)                     varint; version 2 on
    ..      v     len(icc)                       only if flag bit 4; varint
    ..      ..    z, side, alpha, guard, icc streams, y stream (y takes the rest)
    end-4   4     CRC-32 (zlib) of every byte before it

The hyper-latent's spatial shape is not stored: it is ``⌈H/64⌉ × ⌈W/64⌉``
(the models' downsampling factor). Everything but the payloads (streams) is
*overhead* (``Container.overhead``): 22 bytes plus 2 for the λ code of a
variable-rate model, 1-3 for ``len(z)`` (z < 2 MiB), 1 if a side stream is
present, 1-4 if alpha is (alpha stream < 256 MiB) and 1-3 for ``len(guard)``
(version 2 on; guard < 2 MiB) and 1-3 for ``len(icc)`` (version 6, with a profile) —
27 bytes for a variable-rate RGB Kodak image and at most 38 in all. The guard stream
(version 2 on) holds a CRC-32 of the entropy-coded symbols and the latents whose scale
index the encoder made explicit
(``varicodec.models.guard.pack_guard``).
Version 3 has version 2's layout; in it a joint model's y stream is coded in
wavefront order (``varicodec.models.wavefront``), in versions 1-2 in CompressAI's
position-by-position order (:attr:`Container.coding_order`).
Version 4 has version 3's layout; its guard stream may name the guarded latents by a
short hash instead of their positions (*hash mode*, marked by the byte after the
count; docs/FORMAT.md), which a version 3 reader would reject as malformed. Only
version 4 on writes hash mode, and a version 2-3 file that holds it is refused as corrupted.
Version 5 has version 4's layout; in it the guard of a mean-scale or joint model has
an absolute margin at small scales (``absolute_margin(λ)``, from the file's λ), and its
hash-mode threshold widens with it (:attr:`Container.absolute_margin`,
``varicodec.models.guard``); hyperprior files differ only in this byte.
Version 6 is version 5 with an optional ICC profile stream (flag bit 4: the image's
colour profile, zlib-compressed; :mod:`varicodec.icc`). The writer writes the lowest
version that holds the file: 6 only for a file that carries a profile, so every other
file stays readable by a version 5 reader.

Parsing never allocates according to a declared size before checking it
against the bytes present and the limits below; every problem is a
:class:`~varicodec.errors.FormatError`.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

from ..errors import FormatError
from ..icc import unpack_icc
from ..imageio import MAX_PIXELS, MAX_SIDE, check_size
from ..models.registry import ARCHITECTURES, variant_flags

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_PIXELS",
    "MAX_SIDE",
    "MODEL_IDS",
    "Container",
    "lmbda_from_code",
    "read_varint",
    "write_varint",
]

MAGIC = b"VCD"
#: the newest version this module reads and writes
FORMAT_VERSION = 6
#: versions this reader decodes; version 1 has no guard stream (no symbol check);
#: version 4 on may hold a hash-mode guard stream (varicodec.models.guard.hash_tail)
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)
#: the first version whose joint-model y stream is in wavefront order
#: (varicodec.models.wavefront); versions 1-2 hold CompressAI's sequential order.
#: The layout is version 2's; hyperprior and mean files differ only in this byte.
WAVEFRONT_VERSION = 3
#: the first version that may hold a hash-mode guard stream; an older file that holds
#: one is malformed (its writer could not have made it)
HASH_GUARD_VERSION = 4
#: the first version whose mean-scale and joint models guard small scales with an
#: absolute margin (the kernels' noise there passed the relative margin;
#: docs/results/portability.md)
ABSOLUTE_MARGIN_VERSION = 5
#: the first version that may carry an ICC profile (flag bit 4)
ICC_VERSION = 6
#: what a file without an ICC profile is written as (the newest version without one)
PLAIN_VERSION = ABSOLUTE_MARGIN_VERSION

#: registry name → model id byte, from the registry's append-only ``format_ids``
MODEL_IDS: dict[str, int] = {
    name: i for a in ARCHITECTURES.values() for name, i in zip(a.model_names(), a.format_ids)
}
MODEL_NAMES: dict[int, str] = {v: k for k, v in MODEL_IDS.items()}

FLAG_GRAY, FLAG_ALPHA, FLAG_SIDE, FLAG_ICC = 1, 2, 4, 16
_KNOWN_FLAGS = FLAG_GRAY | FLAG_ALPHA | FLAG_SIDE
_FIXED = struct.Struct(">3sBBB8sHH")  # magic … height: 18 bytes
_MAX_VARINT_BYTES = 5


def file_version(icc: bytes | None, version: int | None = None) -> int:
    """The format version of a file that does or does not carry an ICC profile stream:
    ``version`` as given, checked, or for ``None`` the lowest that holds the file
    (:data:`ICC_VERSION` with a profile, :data:`PLAIN_VERSION` without)."""
    if version is None:
        return ICC_VERSION if icc is not None else PLAIN_VERSION
    if icc is not None and version < ICC_VERSION:
        raise ValueError(f"an ICC profile is stored from format version {ICC_VERSION} on")
    return version


def optional_flags(version: int) -> int:
    """The flags a file of ``version`` may set beyond its layout's own: the ICC profile
    from :data:`ICC_VERSION` on (an older reader would report them as unknown)."""
    return FLAG_ICC if version >= ICC_VERSION else 0


def is_variable_rate(model_name: str) -> bool:
    return variant_flags(model_name)[1]


def is_gated(model_name: str) -> bool:
    return variant_flags(model_name)[0]


def lmbda_from_code(code: int, lmbda_range: tuple[float, float]) -> float:
    """λ of a 16-bit λ code for a model trained on ``lmbda_range = (min, max)``.

    Codes are uniform in log λ: ``λ = exp(ln min + (ln max − ln min) · code / 65535)``,
    exactly :meth:`varicodec.layers.LmbdaRange.decode` (a test pins the two), written
    out here so that reading a header (``varicodec info``) needs no torch.
    """
    lo, hi = (float(v) for v in lmbda_range)
    if not 0 < lo < hi:
        raise ValueError(f"need 0 < lmbda_min < lmbda_max, got {lo}, {hi}")
    if not 0 <= int(code) <= 0xFFFF:
        raise ValueError(f"lambda code {code} out of range 0..65535")
    start = math.log(lo)
    return math.exp(start + (math.log(hi) - start) * int(code) / 0xFFFF)


def write_varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, low bits first, high bit = more."""
    if n < 0:
        raise ValueError(f"varint must be non-negative, got {n}")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """``(value, new position)``; raises :class:`FormatError` if cut short or overlong."""
    value = shift = 0
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise FormatError("file is truncated (inside the header)")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and i > 0:
                raise FormatError("corrupted header (overlong length field)")
            return value, pos
        shift += 7
    raise FormatError("corrupted header (length field too long)")



def read_fixed_fields(data: bytes, end: int, known_flags: int, max_pixels: int):
    """The fields every ``.vcd`` starts with, checked: flags, model, fingerprint, size and,
    for variable-rate models, the λ code.

    Returns ``(flags, model name, fingerprint, width, height, λ code or None, position
    after them)``; ``end`` is where the header may reach (before the CRC).
    """
    _, _, flags, model_id, fp, width, height = _FIXED.unpack_from(data)
    if flags & ~known_flags:
        raise FormatError(f"corrupted header (unknown flags 0x{flags:02x})")
    if model_id not in MODEL_NAMES:
        raise FormatError(f"unknown model id {model_id} (corrupted, or from a newer varicodec)")
    name = MODEL_NAMES[model_id]
    check_size(width, height, max_pixels, FormatError)
    pos = _FIXED.size
    code = None
    if is_variable_rate(name):
        if pos + 2 > end:
            raise FormatError("file is truncated (inside the header)")
        (code,) = struct.unpack_from(">H", data, pos)
        pos += 2
    return flags, name, fp, width, height, code, pos

@dataclass(frozen=True)
class Container:
    """One image's header fields and payloads (see the module docstring).

    ``y``, ``z``: the entropy-coded latent and hyper-latent; ``side``: the gate
    masks of ``h_s`` (``b""`` when the decoder recomputes them); ``alpha``: the
    zlib-compressed alpha plane, or ``None``; ``guard``: the symbol check and the
    explicit scale indexes (format version 2 on; ``None`` in a version 1 file);
    ``icc``: the zlib-compressed ICC profile (:func:`varicodec.icc.pack_icc`), or
    ``None``. ``version`` ``None`` (the default) is the lowest version that holds the
    file: :data:`ICC_VERSION` with a profile, :data:`PLAIN_VERSION` without.
    """

    model_name: str
    fingerprint: bytes
    width: int
    height: int
    y: bytes
    z: bytes
    side: bytes = b""
    alpha: bytes | None = None
    gray: bool = False
    lmbda_code: int | None = None
    guard: bytes | None = b""
    version: int = None  # type: ignore[assignment]  # set in __post_init__
    icc: bytes | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", file_version(self.icc, self.version))
        check_size(self.width, self.height, error=ValueError)
        if self.model_name not in MODEL_IDS:
            raise ValueError(f"model {self.model_name!r} has no id in the .vcd format")
        if len(self.fingerprint) != 8:
            raise ValueError("the weights fingerprint must be 8 bytes")
        if is_variable_rate(self.model_name) != (self.lmbda_code is not None):
            raise ValueError("a lambda code is stored exactly for variable-rate models")
        if self.lmbda_code is not None and not 0 <= self.lmbda_code <= 0xFFFF:
            raise ValueError(f"lambda code {self.lmbda_code} out of range 0..65535")
        if self.side and not is_gated(self.model_name):
            raise ValueError("only gated models have a side stream")
        if len(self.side) > 255:
            raise ValueError("gate side stream longer than 255 bytes")
        if self.version not in READABLE_VERSIONS:
            raise ValueError(f"cannot write .vcd format version {self.version}")
        if (self.guard is None) != (self.version == 1):
            raise ValueError("a guard stream is stored exactly in format versions 2 on")

    # ------------------------------------------------------------------ info
    @property
    def mode(self) -> str:
        """The decoded image's Pillow mode: ``RGB``, ``RGBA``, ``L`` or ``LA``."""
        return ("L" if self.gray else "RGB") + ("A" if self.alpha is not None else "")

    @property
    def coding_order(self) -> str:
        """The order of an autoregressive (joint) model's y symbols in this file, for
        ``VaricodecModel.decompress(order=…)``: ``"wavefront"`` or ``"sequential"``."""
        return "wavefront" if self.version >= WAVEFRONT_VERSION else "sequential"

    @property
    def absolute_margin(self) -> bool:
        """Whether a mean-scale or joint model's guard had the absolute margin at small
        scales, for ``VaricodecModel.decompress(absolute_margin=…)``."""
        return self.version >= ABSOLUTE_MARGIN_VERSION

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def icc_profile(self) -> bytes | None:
        """The ICC profile the image was encoded with (inflated), or ``None``."""
        return None if self.icc is None else unpack_icc(self.icc)

    def header(self) -> bytes:
        """Everything before the payloads."""
        flags = (FLAG_GRAY * self.gray) | (FLAG_ALPHA * (self.alpha is not None)) \
            | (FLAG_SIDE * bool(self.side)) | (FLAG_ICC * (self.icc is not None))
        out = bytearray(_FIXED.pack(MAGIC, self.version, flags, MODEL_IDS[self.model_name],
                                    self.fingerprint, self.width, self.height))
        if self.lmbda_code is not None:
            out += struct.pack(">H", self.lmbda_code)
        out += write_varint(len(self.z))
        if self.side:
            out.append(len(self.side))
        if self.alpha is not None:
            out += write_varint(len(self.alpha))
        if self.guard is not None:
            out += write_varint(len(self.guard))
        if self.icc is not None:
            out += write_varint(len(self.icc))
        return bytes(out)

    @property
    def overhead(self) -> int:
        """Bytes that are not payload: header plus CRC."""
        return len(self.header()) + 4

    def stream_sizes(self) -> dict[str, int]:
        sizes = {"y": len(self.y), "z": len(self.z), "side": len(self.side)}
        if self.alpha is not None:
            sizes["alpha"] = len(self.alpha)
        if self.guard is not None:
            sizes["guard"] = len(self.guard)
        if self.icc is not None:
            sizes["icc"] = len(self.icc)
        return sizes

    # ------------------------------------------------------------ bytes I/O
    def pack(self) -> bytes:
        body = b"".join([self.header(), self.z, self.side, self.alpha or b"", self.guard or b"",
                         self.icc or b"", self.y])
        return body + struct.pack(">I", zlib.crc32(body))

    @classmethod
    def unpack(cls, data: bytes, max_pixels: int = MAX_PIXELS) -> Container:
        """Parse and verify a ``.vcd`` byte string.

        Checks, in order: magic, version, header fields and limits (size at
        most ``max_pixels``), declared lengths against the bytes present, CRC.
        """
        data = bytes(data)
        if not data:
            raise FormatError("empty file, not a varicodec file")
        if len(data) < 4 or data[:3] != MAGIC:
            if MAGIC.startswith(data[:3]) and len(data) < 4:
                raise FormatError("file is truncated (shorter than a .vcd header)")
            raise FormatError("not a varicodec file (bad magic; expected 'VCD')")
        version = data[3]
        if version > FORMAT_VERSION:
            raise FormatError(
                f"file uses .vcd format version {version}, newer than this varicodec "
                f"reads (version {FORMAT_VERSION}); upgrade varicodec"
            )
        if version < 1:
            raise FormatError(f"corrupted header (format version {version})")
        end = len(data) - 4  # the CRC
        if end < _FIXED.size:
            raise FormatError("file is truncated (shorter than a .vcd header)")
        flags, name, fp, width, height, code, pos = read_fixed_fields(
            data, end, _KNOWN_FLAGS | optional_flags(version), max_pixels)
        z_len, pos = read_varint(data, pos, end)
        side_len = 0
        if flags & FLAG_SIDE:
            if not is_gated(name):
                raise FormatError(f"corrupted header (side stream flag for ungated {name})")
            if pos >= end:
                raise FormatError("file is truncated (inside the header)")
            side_len = data[pos]
            pos += 1
            if side_len == 0:
                raise FormatError("corrupted header (empty side stream)")
        alpha_len = None
        if flags & FLAG_ALPHA:
            alpha_len, pos = read_varint(data, pos, end)
        guard_len = None
        if version >= 2:
            guard_len, pos = read_varint(data, pos, end)
        icc_len = None
        if flags & FLAG_ICC:
            icc_len, pos = read_varint(data, pos, end)
        declared = z_len + side_len + (alpha_len or 0) + (guard_len or 0) + (icc_len or 0)
        if pos + declared > end:
            raise FormatError("file is truncated (streams shorter than their declared lengths)")
        (crc,) = struct.unpack_from(">I", data, end)
        if zlib.crc32(data[:end]) != crc:
            raise FormatError("file is corrupted or truncated (CRC-32 mismatch)")
        z = data[pos:pos + z_len]
        pos += z_len
        side = data[pos:pos + side_len]
        pos += side_len
        alpha = None
        if alpha_len is not None:
            alpha = data[pos:pos + alpha_len]
            pos += alpha_len
        guard = None
        if guard_len is not None:
            guard = data[pos:pos + guard_len]
            pos += guard_len
        icc = None
        if icc_len is not None:
            icc = data[pos:pos + icc_len]
            pos += icc_len
        c = cls(model_name=name, fingerprint=fp, width=width, height=height,
                y=data[pos:end], z=z, side=side, alpha=alpha, gray=bool(flags & FLAG_GRAY),
                lmbda_code=code, guard=guard, version=version, icc=icc)
        c.icc_profile()  # a malformed profile stream is a damaged file, found here
        return c
