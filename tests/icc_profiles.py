"""Small ICC profiles for the tests, built here (Pillow can only make sRGB ones).

:func:`matrix_profile` writes an ICC v2 display profile of the matrix/TRC kind — white
point, three colorants, one gamma curve per channel, a description — which is how
Display P3 and Adobe RGB (1998) are defined. The colorants are D50-adapted XYZ, as the
ICC profile connection space wants them.
"""

from __future__ import annotations

import struct

#: Adobe RGB (1998) colorants, D50-adapted (the values its published profile holds)
ADOBE_RGB = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087),
             (0.14919, 0.06322, 0.74457))
D50 = (0.9642, 1.0, 0.8249)


def _s15f16(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz(v: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15f16(c) for c in v)


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def _desc(text: str) -> bytes:
    ascii_ = text.encode("ascii") + b"\0"
    body = b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_
    body += struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + bytes(67)
    return body + bytes(-len(body) % 4)


def matrix_profile(description: str = "varicodec test wide-gamut RGB",
                   colorants=ADOBE_RGB, gamma: float = 2.2, gray: bool = False) -> bytes:
    """The bytes of an ICC v2 ``mntr`` profile: RGB with ``colorants`` and one ``gamma``
    for all channels, or (``gray``) a gray profile with that gamma."""
    if gray:
        tags = [(b"desc", _desc(description)), (b"wtpt", _xyz(D50)), (b"kTRC", _curve(gamma))]
    else:
        tags = [(b"desc", _desc(description)), (b"wtpt", _xyz(D50)),
                (b"rXYZ", _xyz(colorants[0])), (b"gXYZ", _xyz(colorants[1])),
                (b"bXYZ", _xyz(colorants[2])), (b"rTRC", _curve(gamma)),
                (b"gTRC", _curve(gamma)), (b"bTRC", _curve(gamma))]
    table = struct.pack(">I", len(tags))
    offset = 128 + 4 + 12 * len(tags)
    data = b""
    for sig, body in tags:
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = 128 + len(table) + len(data)
    header = struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntr"
    header += (b"GRAY" if gray else b"RGB ") + b"XYZ " + bytes(12) + b"acsp" + bytes(4)
    header += bytes(4) + bytes(4) + bytes(4) + bytes(8) + struct.pack(">I", 0)
    header += b"".join(_s15f16(c) for c in D50) + bytes(4)
    header += bytes(128 - len(header))
    assert len(header) == 128
    return header + table + data
