"""varicodec.codec.encode / decode / info on tiny models (N = M = 16)."""

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_models import tiny_model

from varicodec.codec import decode, decode_image, encode, encode_image, info, pretrained
from varicodec.errors import FormatError, ModelMismatchError, VaricodecError, VaricodecWarning
from varicodec.models import registry, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    paths = {}
    for key, name, seed in (("vr", "hyperprior-ecgbm", 0), ("other", "hyperprior-ecgbm", 1),
                            ("fixed", "hyperprior-base", 0)):
        paths[key] = save_model(tiny_model(name, seed), d / f"{key}.safetensors")
    return paths


def smooth(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    small = (rng.random((4, 4, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BILINEAR))
    return img if c == 3 else img[..., 0]


@pytest.mark.parametrize("shape", [(1, 1), (37, 53), (64, 64), (65, 130)])
def test_rgb_roundtrip_sizes(models, shape):
    img = smooth(*shape)
    data = encode(img, models["vr"], quality=6)
    out = decode(data, models["vr"])
    assert out.mode == "RGB" and out.size == (shape[1], shape[0])
    assert info(data)["bytes"] == len(data)


def test_encode_result_and_info(models):
    r = encode_image(smooth(40, 60), models["vr"], lmbda=0.01)
    assert r.bpp == len(r.data) * 8 / (40 * 60)
    assert r.psnr_db is not None  # its value is checked against decode below
    assert abs(r.lmbda - 0.01) < 1e-4 and r.lmbda_code is not None
    d = info(r.data, models["vr"])
    assert d["width"] == 60 and d["height"] == 40 and d["mode"] == "RGB"
    assert d["overhead_bytes"] == r.overhead_bytes <= 32
    assert abs(d["lmbda"] - r.lmbda) < 1e-12
    assert d["model"] == "hyperprior-ecgbm" and len(d["fingerprint"]) == 16
    # PSNR reported by the encoder is that of what decode returns
    out = np.asarray(decode(r.data, models["vr"]))
    mse = np.mean((out.astype(float) - smooth(40, 60)) ** 2)
    assert abs(10 * np.log10(255**2 / mse) - r.psnr_db) < 1e-9


def test_deterministic(models):
    img = smooth(30, 30)
    assert encode(img, models["vr"], quality=3) == encode(img, models["vr"], quality=3)


def test_gray_rgba_la(models):
    g = smooth(33, 20, c=1)
    out = decode(encode(g, models["vr"], quality=5), models["vr"])
    assert out.mode == "L" and out.size == (20, 33)

    rgba = np.dstack([smooth(30, 40), (np.arange(30 * 40) % 256).reshape(30, 40)]).astype(np.uint8)
    out = decode(encode(rgba, models["vr"], quality=5), models["vr"])
    assert out.mode == "RGBA"
    assert np.array_equal(np.asarray(out)[..., 3], rgba[..., 3])  # alpha is lossless

    la = np.dstack([g, np.full_like(g, 255)])
    data = encode(la, models["vr"], quality=5)
    assert info(data)["streams"]["alpha"] == 0  # opaque alpha costs nothing
    out = decode(data, models["vr"])
    assert out.mode == "LA" and (np.asarray(out)[..., 1] == 255).all()


def test_pil_and_path_inputs(models, tmp_path):
    img = smooth(20, 24)
    p = tmp_path / "x.png"
    Image.fromarray(img).save(p)
    a = encode(Image.fromarray(img), models["vr"], quality=4)
    b = encode(p, models["vr"], quality=4)
    c = encode(str(p), models["vr"], quality=4)
    d = encode(p.read_bytes(), models["vr"], quality=4)  # an image file's bytes
    assert a == b == c == d
    for bad, message in ((b"", "empty"), (b"GIF89a junk", "not an image")):
        with pytest.raises(VaricodecError, match=message):
            encode(bad, models["vr"], quality=4)


def test_16bit_array_warns(models):
    img = (smooth(16, 16).astype(np.uint16) * 257)[..., 0]
    with pytest.warns(VaricodecWarning, match="16-bit"):
        data = encode(img, models["vr"], quality=4)
    assert decode(data, models["vr"]).mode == "L"


def test_saved_model_matches_its_file(tmp_path):
    m = tiny_model("hyperprior-ecgbm", 0)
    path = save_model(m, tmp_path / "m.safetensors")  # rounds m's weights to what is stored
    data = encode(smooth(20, 20), m, quality=4)
    decode(data, path)  # the in-memory model and its file should have the same fingerprint


def test_model_objects_and_mismatch(models):
    m = pretrained.resolve_model(models["vr"])  # a VaricodecModel object
    data = encode(smooth(20, 20), m, quality=4)
    decode(data, models["vr"])
    with pytest.raises(ModelMismatchError, match="other hyperprior-ecgbm weights"):
        decode(data, models["other"])
    with pytest.raises(ModelMismatchError, match="not 'hyperprior-base'"):
        decode(data, models["fixed"])


def test_fixed_rate_model(models):
    data = encode(smooth(20, 20), models["fixed"])
    assert info(data)["lmbda_code"] is None
    decode(data, models["fixed"])
    with pytest.raises(ValueError, match="fixed-rate"):
        encode(smooth(20, 20), models["fixed"], quality=3)
    with pytest.raises(ValueError, match="variable-rate"):
        encode(smooth(20, 20), models["fixed"], bpp=0.5)


def test_rate_option_errors(models):
    img = smooth(8, 8)
    with pytest.raises(ValueError, match="at most one"):
        encode(img, models["vr"], quality=3, lmbda=0.01)
    with pytest.raises(ValueError, match="outside this model's trained range"):
        encode(img, models["vr"], lmbda=5.0)
    with pytest.raises(ValueError, match="quality"):
        encode(img, models["vr"], quality=9)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            encode(img, models["vr"], bpp=bad)


def test_model_resolution_errors(models, tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "none")
    with pytest.raises(VaricodecError, match="no bundled weights for model 'hyperprior-ecgbm'"):
        encode(smooth(8, 8))
    data = encode(smooth(8, 8), models["vr"], quality=2)
    with pytest.raises(ModelMismatchError, match="not bundled"):
        decode(data)
    with pytest.raises(VaricodecError, match="unknown model"):
        encode(smooth(8, 8), "resnet50")
    with pytest.raises(VaricodecError, match="no such weights file"):
        encode(smooth(8, 8), str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not weights")
    with pytest.raises(VaricodecError, match="cannot load weights"):
        encode(smooth(8, 8), junk)
    # bundled weights are found by name, for encoding and (from the header) decoding
    monkeypatch.setattr(registry, "WEIGHTS_DIR", models["vr"].parent)
    (models["vr"].parent / "hyperprior-ecgbm.safetensors").write_bytes(models["vr"].read_bytes())
    data = encode(smooth(8, 8), quality=2)
    assert decode(data).size == (8, 8)


def test_untabled_model_refused():
    m = tiny_model()
    m.net.entropy_bottleneck._offset = torch.zeros(0, dtype=torch.int32)
    with pytest.raises(VaricodecError, match="update"):
        encode(smooth(8, 8), m, quality=2)


def test_decode_limits(models):
    data = encode(smooth(64, 64), models["vr"], quality=2)
    with pytest.raises(FormatError, match="exceeds the limit"):
        decode(data, models["vr"], max_pixels=1000)
    img, c = decode_image(data, models["vr"])
    assert c.width == 64 and img.size == (64, 64)
    tall = encode(smooth(200, 1), models["vr"], quality=2)  # 200 pixels, padded to 64×256
    with pytest.raises(FormatError, match="pads to 64×256"):
        decode(tall, models["vr"], max_pixels=5000)


# ------------------------------------------------------------------ issue 13
def test_load_model_by_registry_name(tmp_path, monkeypatch):
    from varicodec import load_model

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    path = save_model(tiny_model("hyperprior-bm", 0), tmp_path / "hyperprior-bm.safetensors")
    m = load_model("hyperprior-bm")
    assert m.name == "hyperprior-bm" and m.source == str(path)
    with pytest.raises(FileNotFoundError, match="give the registry name 'hyperprior-bm'"):
        load_model("hyperprior-bm.safetensors")  # not in the working folder
    with pytest.raises(FileNotFoundError, match="no bundled weights for model 'joint-ecg'"):
        load_model("joint-ecg")
    with pytest.raises(FileNotFoundError, match="no such weights file"):
        load_model(tmp_path / "missing.safetensors")


def test_strict_rate_target(models):
    from varicodec.codec.rate_control import RateTargetError

    with pytest.raises(RateTargetError, match="target missed"):
        encode_image(smooth(64, 64), models["vr"], bpp=100, strict=True)
    r = encode_image(smooth(64, 64), models["vr"], bpp=100)
    assert not r.rate_control.converged and r.rate_control.as_dict()["converged"] is False
    for bad in (-1, 0, 1, 2, float("nan")):
        with pytest.raises(ValueError, match="tolerance"):
            encode_image(smooth(8, 8), models["vr"], bpp=0.5, tolerance=bad)
    with pytest.raises(ValueError, match="bpp or psnr target only"):
        encode_image(smooth(8, 8), models["vr"], quality=3, tolerance=0.1)


def test_tiled_roundtrip_every_mode(models):
    rgb = smooth(150, 130)
    alpha = (np.arange(150 * 130) % 251).reshape(150, 130).astype(np.uint8)
    cases = {"RGB": rgb, "L": rgb[..., 0], "RGBA": np.dstack([rgb, alpha]),
             "LA": np.dstack([rgb[..., 0], alpha])}
    for mode, arr in cases.items():
        r = encode_image(Image.fromarray(arr, mode), models["vr"], quality=5, tile=64)
        img, f = decode_image(r.data, models["vr"])
        assert img.mode == mode and img.size == (130, 150)
        assert type(f).__name__ == "TiledFile" and len(f.tiles) == 9  # 3 × 3 tiles of 64
        if mode.endswith("A"):
            assert np.array_equal(np.asarray(img)[..., -1], alpha)  # alpha stays lossless
        d = info(r.data, models["vr"])
        assert d["tiles"] == {"count": 9, "tile": 64, "margin": 16} and d["mode"] == mode
        assert d["bytes"] == len(r.data) and abs(d["lmbda"] - r.lmbda) < 1e-12
    # the reported PSNR is that of what decode returns
    r = encode_image(rgb, models["vr"], quality=5, tile=64)
    out = np.asarray(decode(r.data, models["vr"]))
    mse = np.mean((out.astype(float) - rgb) ** 2)
    assert abs(10 * np.log10(255**2 / mse) - r.psnr_db) < 1e-9


def test_tiles_are_independent_images(models):
    """Each core is what coding its widened rectangle on its own gives, bit for bit."""
    from varicodec.codec.tiles import tile_grid

    rgb = smooth(150, 130)
    r = encode_image(rgb, models["vr"], quality=5, tile=64, tile_margin=16)
    whole = np.asarray(decode(r.data, models["vr"]))
    for t in tile_grid(130, 150, 64, 16):
        (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) = t.coded, t.core
        alone = encode(rgb[y0:y1, x0:x1], models["vr"], lmbda=r.lmbda)
        part = np.asarray(decode(alone, models["vr"]))
        oy, ox = t.offset
        assert np.array_equal(part[oy:oy + cy1 - cy0, ox:ox + cx1 - cx0], whole[cy0:cy1, cx0:cx1])


def test_tile_choice_and_errors(models):
    from varicodec.codec.tiles import AUTO_TILE_PIXELS, DEFAULT_TILE, choose_tile

    assert choose_tile(2048, 2048, "auto") is None  # 4 Mpx: one piece, bytes as before
    assert choose_tile(2048, 2049, "auto") == DEFAULT_TILE == 992
    assert 2048 * 2048 == AUTO_TILE_PIXELS
    assert choose_tile(100, 100, 128) is None and choose_tile(100, 200, 128) == 128
    assert choose_tile(9000, 9000, 0) is None
    small = smooth(40, 60)
    assert encode(small, models["vr"], quality=3) == \
        encode_image(small, models["vr"], quality=3, tile=0).data
    assert choose_tile(100, 200, 100) == 100  # any side from 64 pixels
    for bad in (63, 32, -64, "big"):
        with pytest.raises(ValueError, match="tile size"):
            encode_image(small, models["vr"], quality=3, tile=bad)
    with pytest.raises(ValueError, match="margin"):
        encode_image(small, models["vr"], quality=3, tile=64, tile_margin=256)


def test_damaged_tiled_files(models):
    import struct
    import zlib

    from varicodec.codec.tiles import TiledFile

    data = encode_image(smooth(100, 100), models["vr"], quality=3, tile=64).data

    def recrc(b):
        return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4]))

    with pytest.raises(FormatError, match="CRC-32"):
        decode(data[:-20] + bytes([data[-20] ^ 1]) + data[-19:], models["vr"])
    with pytest.raises(FormatError, match="truncated"):
        decode(data[: len(data) // 2], models["vr"])
    f = TiledFile.unpack(data)
    swapped = TiledFile(**{**f.__dict__, "tiles": [f.tiles[1], f.tiles[0]] + f.tiles[2:]})
    with pytest.raises(FormatError, match="does not match"):  # tiles of other sizes
        decode(swapped.pack(), models["vr"])
    fewer = recrc(data[:23] + bytes([3]) + data[24:])  # count: after λ code, tile, margin
    with pytest.raises(FormatError, match="tiles for a 100×100"):
        decode(fewer, models["vr"])
    other = encode(smooth(100, 100), models["other"], quality=3)
    with pytest.raises(ModelMismatchError):
        decode(data, models["other"])
    assert other  # the other weights code fine on their own
