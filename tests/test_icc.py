"""ICC colour profiles: carried when they matter (format version 6), dropped when sRGB."""

import dataclasses
import io
import struct
import zlib

import numpy as np
import pytest
from icc_profiles import matrix_profile
from PIL import Image, ImageCms
from tiny_models import tiny_model

from varicodec import icc
from varicodec.cli import main
from varicodec.codec import decode, decode_image, encode_image, info
from varicodec.codec.format import (
    FORMAT_VERSION,
    ICC_VERSION,
    PLAIN_VERSION,
    Container,
    write_varint,
)
from varicodec.errors import FormatError, VaricodecWarning
from varicodec.models import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WIDE = matrix_profile("varicodec test wide-gamut RGB")
GRAY = matrix_profile("varicodec test gray 2.2", gray=True)
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tiny_model("hyperprior-ecgbm", 0),
                      tmp_path_factory.mktemp("m") / "vr.safetensors")


def picture(mode="RGB", profile=None, h=40, w=56) -> Image.Image:
    rng = np.random.default_rng(1)
    small = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8))
    im = small.resize((w, h), Image.BILINEAR).convert(mode)
    if profile is None:
        return im
    buf = io.BytesIO()
    im.save(buf, "PNG", icc_profile=profile)
    buf.seek(0)
    return Image.open(buf)


def recrc(b: bytes) -> bytes:
    return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4]))


# ------------------------------------------------------------------ profiles
def test_profiles_are_checked_and_classified():
    assert icc.check_profile(WIDE) == "RGB" and icc.check_profile(GRAY) == "GRAY"
    assert icc.check_profile(SRGB) == "RGB"
    assert icc.is_srgb(SRGB) and not icc.is_srgb(WIDE) and not icc.is_srgb(GRAY)
    # sRGB's primaries with a plain 2.2 gamma instead of sRGB's curve: another profile
    # (the dark tones differ by more than the tolerance)
    near = matrix_profile("sRGB primaries, gamma 2.2",
                          colorants=((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971),
                                     (0.1431, 0.0606, 0.7141)))
    assert not icc.is_srgb(near)
    assert icc.describe(WIDE) == "varicodec test wide-gamut RGB"
    assert not icc.is_srgb(b"junk" * 40)  # what LittleCMS cannot read is never "sRGB"
    for bad, why in ((WIDE[:100], "shorter"), (WIDE[:-4], "declares"),
                     (WIDE[:36] + b"xxxx" + WIDE[40:], "acsp")):
        with pytest.raises(ValueError, match=why):
            icc.check_profile(bad)


def test_profile_stream_is_bounded_and_complete():
    assert icc.unpack_icc(icc.pack_icc(WIDE)) == WIDE
    stream = icc.pack_icc(WIDE)
    huge = struct.pack(">I", icc.MAX_ICC_BYTES + 132) + WIDE[4:] + bytes(icc.MAX_ICC_BYTES)
    for bad in (b"not zlib", stream[:-3], stream + b"x", zlib.compress(b"x" * 200),
                zlib.compress(huge)):
        with pytest.raises(FormatError, match="ICC"):
            icc.unpack_icc(bad)


# -------------------------------------------------------------------- format
def make(**kw) -> Container:
    base = dict(model_name="hyperprior-ecgbm", fingerprint=bytes(range(8)), width=100,
                height=70, y=b"y" * 300, z=b"z" * 40, lmbda_code=12345)
    base.update(kw)
    return Container(**base)


def test_a_file_is_written_at_the_lowest_version_that_holds_it():
    assert FORMAT_VERSION == ICC_VERSION == 6 and PLAIN_VERSION == 5
    plain, carried = make(), make(icc=icc.pack_icc(WIDE))
    assert plain.version == 5 and carried.version == 6
    data = carried.pack()
    assert data[3] == 6 and data[4] & 16
    back = Container.unpack(data)
    assert back == carried and back.icc_profile() == WIDE
    assert len(data) == carried.overhead + sum(carried.stream_sizes().values())
    assert carried.stream_sizes()["icc"] == len(carried.icc)
    # without a profile: version 5's bytes exactly, and a profile needs version 6
    assert plain.pack() == dataclasses.replace(carried, icc=None, version=5).pack()
    with pytest.raises(ValueError, match="version 6"):
        make(icc=icc.pack_icc(WIDE), version=5)


def test_damaged_profile_streams_are_format_errors():
    data = make(icc=icc.pack_icc(WIDE)).pack()
    for n in range(len(data)):
        with pytest.raises(FormatError):
            Container.unpack(data[:n])
    # the ICC flag in a version 5 file: its writer could not have set it
    with pytest.raises(FormatError, match="unknown flags"):
        Container.unpack(recrc(data[:3] + b"\x05" + data[4:]))
    # a valid CRC over a profile stream that is not one
    bad = make(icc=zlib.compress(b"not a profile" * 20)).pack()
    with pytest.raises(FormatError, match="corrupted ICC profile stream"):
        Container.unpack(bad)


# ----------------------------------------------------------------------- API
def test_a_wide_gamut_profile_travels_with_the_pixels(model):
    r = encode_image(picture(profile=WIDE), model, quality=4)
    plain = encode_image(picture(), model, quality=4)
    assert r.data[3] == 6 and r.icc_bytes == len(icc.pack_icc(WIDE)) > 0
    # the same coded pixels: the files differ by the profile stream only
    c, p = Container.unpack(r.data), Container.unpack(plain.data)
    assert (c.y, c.z, c.guard) == (p.y, p.z, p.guard) and plain.data[3] == 5
    assert len(r.data) == len(plain.data) + r.icc_bytes + len(write_varint(r.icc_bytes))
    out = decode(r.data, model)
    assert out.info["icc_profile"] == WIDE
    assert np.array_equal(np.asarray(out), np.asarray(decode(plain.data, model)))
    assert info(r.data, model)["icc_profile"].startswith("varicodec test wide-gamut RGB (")
    assert "icc_profile" not in info(plain.data, model)


def test_srgb_and_unwanted_profiles_are_not_carried(model):
    plain = encode_image(picture(), model, quality=4).data
    assert encode_image(picture(profile=SRGB), model, quality=4).data == plain
    dropped = encode_image(picture(profile=WIDE), model, quality=4, keep_icc=False)
    assert dropped.data == plain and dropped.icc_bytes == 0
    assert "icc_profile" not in decode(plain, model).info


def test_gray_profiles_and_mismatches(model):
    r = encode_image(picture("L", GRAY), model, quality=4)
    out = decode(r.data, model)
    assert out.mode == "L" and out.info["icc_profile"] == GRAY
    # an RGB profile on a gray image describes other pixels: dropped, with a warning
    with pytest.warns(VaricodecWarning, match="RGB colours on a GRAY image"):
        r = encode_image(picture("L", WIDE), model, quality=4)
    assert r.data[3] == 5
    with pytest.warns(VaricodecWarning, match="acsp"):
        im = picture()
        im.info["icc_profile"] = WIDE[:36] + b"xxxx" + WIDE[40:]
        assert encode_image(im, model, quality=4).data[3] == 5


def test_tiled_files_carry_the_profile_once(model):
    r = encode_image(picture(profile=WIDE, h=150, w=130), model, quality=4, tile=64)
    img, f = decode_image(r.data, model)
    assert type(f).__name__ == "TiledFile" and f.version == 6 and len(f.tiles) == 9
    assert all(Container.unpack(t).icc is None for t in f.tiles)
    assert img.info["icc_profile"] == WIDE and info(r.data, model)["streams"]["icc"] > 0
    plain = encode_image(picture(h=150, w=130), model, quality=4, tile=64)
    assert plain.data[3] == 5
    assert len(r.data) == len(plain.data) + r.icc_bytes + len(write_varint(r.icc_bytes))
    damaged = bytearray(r.data)
    at = bytes(r.data).index(f.icc)
    damaged[at + 2] ^= 0xFF
    with pytest.raises(FormatError, match="ICC"):
        decode(recrc(bytes(damaged)), model)


# ----------------------------------------------------------------------- CLI
def test_command_line(model, tmp_path, capsys):
    picture(profile=WIDE).save(tmp_path / "wide.png", icc_profile=WIDE)
    assert main(["encode", str(tmp_path / "wide.png"), "--model", str(model),
                 "--quality", "4"]) == 0
    assert "ICC profile" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "wide.vcd"), "--model", str(model)]) == 0
    assert "varicodec test wide-gamut RGB" in capsys.readouterr().out
    for name in ("out.png", "out.jpg", "out.webp", "out.tif"):
        assert main(["decode", str(tmp_path / "wide.vcd"), "-o", str(tmp_path / name),
                     "--model", str(model)]) == 0
        assert Image.open(tmp_path / name).info.get("icc_profile") == WIDE, name
    capsys.readouterr()
    assert main(["decode", str(tmp_path / "wide.vcd"), "-o", str(tmp_path / "out.bmp"),
                 "--model", str(model)]) == 0
    err = capsys.readouterr().err
    assert "BMP cannot hold the image's ICC colour profile" in err and err.count("\n") == 1
    assert main(["encode", str(tmp_path / "wide.png"), "-o", str(tmp_path / "n.vcd"),
                 "--model", str(model), "--quality", "4", "--no-icc", "--json"]) == 0
    assert '"icc_bytes": 0' in capsys.readouterr().out
    assert (tmp_path / "n.vcd").read_bytes()[3] == 5
