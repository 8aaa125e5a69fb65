"""The .vcd container: layout, limits and every way a file can be damaged."""

import struct
import zlib

import pytest

from varicodec.codec.format import (
    FORMAT_VERSION,
    MAX_PIXELS,
    MODEL_IDS,
    Container,
    read_varint,
    write_varint,
)
from varicodec.errors import FormatError


def make(**kw) -> Container:
    base = dict(model_name="hyperprior-ecgbm", fingerprint=bytes(range(8)), width=100,
                height=70, y=b"y" * 300, z=b"z" * 40, lmbda_code=12345)
    base.update(kw)
    return Container(**base)


def recrc(b: bytes) -> bytes:
    return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4]))


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 16383, 16384, 2**21, 2**34])
def test_varint_roundtrip(n):
    b = write_varint(n)
    assert read_varint(b, 0, len(b)) == (n, len(b))


def test_varint_errors():
    with pytest.raises(FormatError, match="truncated"):
        read_varint(b"\x80", 0, 1)
    with pytest.raises(FormatError):
        read_varint(b"\x80\x00", 0, 2)  # overlong
    with pytest.raises(FormatError):
        read_varint(b"\xff" * 6, 0, 6)


@pytest.mark.parametrize("kw", [
    {},
    {"model_name": "hyperprior-base", "lmbda_code": None},
    {"gray": True, "alpha": b""},
    {"alpha": b"a" * 1000, "side": b"s" * 6, "model_name": "joint-ecgbm"},
    {"width": 1, "height": 1, "y": b""},
    {"guard": b"g" * 300, "alpha": b"a" * 7},
    {"version": 1, "guard": None},
])
def test_roundtrip(kw):
    c = make(**kw)
    data = c.pack()
    assert Container.unpack(data) == c
    assert len(data) == c.overhead + sum(c.stream_sizes().values())


def test_overhead_bounds():
    # typical: variable-rate RGB, 1-byte len(z) and len(guard)
    assert make(guard=b"g" * 4).overhead == 26
    assert make(model_name="hyperprior-base", lmbda_code=None).overhead == 24
    # every optional field present, z up to 2 MiB: 18 + 2 + 3 + 1 + 1 + 1 + 4
    big = make(model_name="hyperprior-ecgbm", width=65535, height=4096, z=b"z" * (2**21 - 1),
               side=b"s" * 255, alpha=b"")
    assert big.overhead == 30
    # an alpha stream below 256 MiB adds at most 3 more bytes, a guard stream below
    # 2 MiB 2 more: 35 in all
    assert len(write_varint(2**28 - 1)) - len(write_varint(0)) == 3
    assert len(write_varint(2**21 - 1)) - len(write_varint(0)) == 2
    # a version 1 file has no len(guard)
    assert make(version=1, guard=None).overhead == 25


def test_version_1_files_are_read():
    # the layout before the guard stream: no len(guard), no guard stream
    old = make(version=1, guard=None, alpha=b"a" * 5)
    data = old.pack()
    assert data[3] == 1
    assert Container.unpack(data) == old
    assert Container.unpack(data).guard is None
    assert Container.unpack(make().pack()).version == FORMAT_VERSION - 1 == 5  # no ICC: 5
    with pytest.raises(ValueError):
        make(version=1)  # a version 1 file cannot carry a guard stream
    with pytest.raises(ValueError):
        make(guard=None)  # ... and a version 2 file always has one


def test_modes():
    assert make().mode == "RGB"
    assert make(gray=True).mode == "L"
    assert make(alpha=b"").mode == "RGBA"
    assert make(gray=True, alpha=b"x").mode == "LA"


def test_invalid_containers_refused_at_write():
    with pytest.raises(ValueError):
        make(lmbda_code=None)  # variable-rate model needs a code
    with pytest.raises(ValueError):
        make(model_name="hyperprior-base")  # fixed-rate model has none
    with pytest.raises(ValueError):
        make(side=b"s", model_name="hyperprior-bm")
    with pytest.raises(ValueError):
        make(width=0)
    with pytest.raises(ValueError):
        make(width=65535, height=65535)
    with pytest.raises(ValueError):
        make(model_name="nonsense")


def test_every_truncation_is_a_format_error():
    data = make(alpha=b"a" * 20, side=b"s", model_name="mean-ecgbm").pack()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            Container.unpack(data[:n])


def test_every_bit_flip_is_caught():
    data = make(y=b"\x01\x02" * 10, z=b"\x03" * 5).pack()
    for i in range(len(data)):
        for bit in range(8):
            b = bytearray(data)
            b[i] ^= 1 << bit
            with pytest.raises(FormatError):
                Container.unpack(bytes(b))


def test_bad_magic_and_version():
    data = make().pack()
    with pytest.raises(FormatError, match="not a varicodec file"):
        Container.unpack(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(FormatError, match="empty"):
        Container.unpack(b"")
    newer = recrc(data[:3] + bytes([FORMAT_VERSION + 1]) + data[4:])
    with pytest.raises(FormatError, match="newer"):
        Container.unpack(newer)
    with pytest.raises(FormatError, match="version 0"):
        Container.unpack(recrc(data[:3] + b"\x00" + data[4:]))


def test_crafted_headers_with_valid_crc():
    data = bytearray(make().pack())
    absurd = bytearray(data)
    absurd[14:18] = struct.pack(">HH", 65535, 65535)
    with pytest.raises(FormatError, match="exceeds the limit"):
        Container.unpack(recrc(bytes(absurd)))
    zero = bytearray(data)
    zero[14:16] = b"\x00\x00"
    with pytest.raises(FormatError, match="outside"):
        Container.unpack(recrc(bytes(zero)))
    unknown = bytearray(data)
    unknown[5] = 200
    with pytest.raises(FormatError, match="unknown model id"):
        Container.unpack(recrc(bytes(unknown)))
    flags = bytearray(data)
    flags[4] = 0x80
    with pytest.raises(FormatError, match="flags"):
        Container.unpack(recrc(bytes(flags)))
    side = bytearray(make(model_name="hyperprior-bm").pack())
    side[4] |= 4
    with pytest.raises(FormatError, match="side stream"):
        Container.unpack(recrc(bytes(side)))
    long_z = bytearray(make(y=b"").pack())
    long_z[20] = 0x7F  # len(z) = 127 > bytes present
    with pytest.raises(FormatError, match="truncated"):
        Container.unpack(recrc(bytes(long_z)))
    ok = make(width=300, height=300).pack()
    with pytest.raises(FormatError, match="exceeds the limit of 1000"):
        Container.unpack(ok, max_pixels=1000)


def test_model_ids_are_stable():
    # ids are part of the format: this table may only grow
    legacy = [f"{a}-{v}" for a in ("hyperprior", "mean", "joint")
              for v in ("base", "ecg", "bm", "ecgbm")]
    assert [MODEL_IDS[n] for n in legacy] == list(range(1, 13))
    assert sorted(MODEL_IDS.values()) == list(range(1, len(MODEL_IDS) + 1))
    assert MAX_PIXELS == 2**28
