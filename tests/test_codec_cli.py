"""`varicodec encode | decode | info` in-process: every input kind, every bad input."""

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_model

from varicodec.cli import main
from varicodec.models import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    return {
        "vr": str(save_model(tiny_model("hyperprior-ecgbm", 0), d / "vr.safetensors")),
        "other": str(save_model(tiny_model("hyperprior-ecgbm", 1), d / "o.safetensors")),
        "fixed": str(save_model(tiny_model("hyperprior-base", 0), d / "f.safetensors")),
    }


def rgb(h=37, w=53, seed=0):
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def write_inputs(d: Path) -> dict[str, tuple[str, tuple[int, int]]]:
    """name → (expected decoded mode, expected size W×H)."""
    a = rgb()
    alpha = (np.arange(37 * 53) % 251).reshape(37, 53).astype(np.uint8)
    Image.fromarray(a).save(d / "rgb.png")
    Image.fromarray(a[..., 0]).save(d / "gray.png")
    Image.fromarray(a[..., 0] > 128).save(d / "bw.png")
    Image.fromarray(np.dstack([a, alpha])).save(d / "rgba.png")
    Image.fromarray(np.dstack([a, np.full_like(alpha, 255)])).save(d / "opaque.png")
    Image.fromarray(np.dstack([a[..., 0], alpha])).save(d / "la.png")
    Image.fromarray(a[..., 0].astype(np.uint16) * 257).save(d / "gray16.png")
    (d / "rgb16.png").write_bytes(imagecodecs.png_encode(a.astype(np.uint16) * 257))
    Image.fromarray(a).quantize(16).save(d / "palette.png")
    pt = Image.fromarray(a).quantize(16)
    pt.save(d / "palette_t.png", transparency=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    Image.fromarray(a).save(d / "exif.jpg", exif=exif, quality=95)
    Image.fromarray(a).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(a[:1, :1]).save(d / "one.png")
    Image.fromarray(a).save(d / "rgb.bmp")
    return {
        "rgb.png": ("RGB", (53, 37)), "gray.png": ("L", (53, 37)), "bw.png": ("L", (53, 37)),
        "rgba.png": ("RGBA", (53, 37)), "opaque.png": ("RGBA", (53, 37)),
        "la.png": ("LA", (53, 37)), "gray16.png": ("L", (53, 37)),
        "rgb16.png": ("RGB", (53, 37)), "palette.png": ("RGB", (53, 37)),
        "palette_t.png": ("RGBA", (53, 37)), "exif.jpg": ("RGB", (37, 53)),
        "cmyk.jpg": ("RGB", (53, 37)), "one.png": ("RGB", (1, 1)), "rgb.bmp": ("RGB", (53, 37)),
    }


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return d, write_inputs(d)


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def listing(d: Path) -> set[str]:
    return set(os.listdir(d))


def test_roundtrip_every_input_kind(models, inputs, tmp_path, capsys):
    src, kinds = inputs
    for name, (mode, size) in kinds.items():
        vcd = tmp_path / (name + ".vcd")
        rc, out, err = run(capsys, "encode", src / name, "-o", vcd, "--model", models["vr"],
                           "--quality", 5)
        assert rc == 0, (name, err)
        assert "bpp" in out and " dB" in out, out
        if name in ("gray16.png", "rgb16.png"):
            assert "warning: " in err and "16-bit" in err, (name, err)
        if name == "cmyk.jpg":
            assert "CMYK" in err
        rc, out, err = run(capsys, "decode", vcd, "--model", models["vr"])
        assert rc == 0, (name, err)
        with Image.open(str(vcd) + ".png") as im:
            assert (im.mode, im.size) == (mode, size), name
            if name in ("rgba.png", "la.png"):
                with Image.open(src / name) as orig:
                    assert np.array_equal(np.asarray(im)[..., -1], np.asarray(orig)[..., -1])


def test_default_names_and_info(models, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "photo.png")
    rc, out, _ = run(capsys, "encode", tmp_path / "photo.png", "--model", models["vr"],
                     "--lmbda", 0.01)
    assert rc == 0 and (tmp_path / "photo.vcd").is_file()
    bpp = (tmp_path / "photo.vcd").stat().st_size * 8 / (53 * 37)
    assert f"{bpp:.4f} bpp" in out
    rc, out, _ = run(capsys, "decode", tmp_path / "photo.vcd", "--model", models["vr"])
    assert rc == 0 and (tmp_path / "photo.vcd.png").is_file()
    rc, out, _ = run(capsys, "info", tmp_path / "photo.vcd", "--model", models["vr"])
    assert rc == 0 and "overhead_bytes" in out and "hyperprior-ecgbm" in out
    assert "lmbda " in out
    rc, out, _ = run(capsys, "info", tmp_path / "photo.vcd", "--json")
    assert rc == 0 and '"width": 53' in out
    assert listing(tmp_path) == {"photo.png", "photo.vcd", "photo.vcd.png"}
    # an existing folder as -o keeps the default name
    (tmp_path / "sub").mkdir()
    assert run(capsys, "encode", tmp_path / "photo.png", "-o", tmp_path / "sub", "--model",
               models["vr"])[0] == 0
    assert (tmp_path / "sub" / "photo.vcd").is_file()


def test_folder_mode(models, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(rgb(seed=i)).save(src / f"im{i}.png")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    rc, out, err = run(capsys, "encode", src, "-o", tmp_path / "out", "--model", models["vr"],
                       "--quality", 3)
    assert rc == 2  # broken.png failed, the others went through
    assert "broken.png" in err and "Traceback" not in err
    assert listing(tmp_path / "out") == {"im0.vcd", "im1.vcd"}
    assert "2 of 3 files encoded" in out
    rc, out, err = run(capsys, "decode", tmp_path / "out", "-o", tmp_path / "dec",
                       "--model", models["vr"])
    assert rc == 0, err
    assert listing(tmp_path / "dec") == {"im0.vcd.png", "im1.vcd.png"}
    # outputs exist now: refused per file without --force, replaced with it
    rc, _, err = run(capsys, "decode", tmp_path / "out", "-o", tmp_path / "dec",
                     "--model", models["vr"])
    assert rc == 2 and "--force" in err
    assert run(capsys, "decode", tmp_path / "out", "-o", tmp_path / "dec", "--model",
               models["vr"], "--force")[0] == 0
    (src / "im0.jpg").write_bytes((src / "im0.png").read_bytes())
    rc, _, err = run(capsys, "encode", src, "-o", tmp_path / "o2", "--model", models["vr"])
    assert rc == 2 and "both be written" in err


@pytest.fixture()
def vcd(models, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    assert run(capsys, "encode", tmp_path / "a.png", "--model", models["vr"],
               "--quality", 4)[0] == 0
    return tmp_path / "a.vcd"


def recrc(b: bytes) -> bytes:
    return b[:-4] + struct.pack(">I", zlib.crc32(b[:-4]))


def expect_error(capsys, d: Path, pattern: str, *argv):
    before = listing(d)
    rc, out, err = run(capsys, *argv)
    assert rc == 2, (argv, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("varicodec: error:"), err
    assert pattern in lines[0], (pattern, lines[0])
    assert listing(d) == before, "a failed command left a file behind"


def test_bad_inputs_encode(models, tmp_path, vcd, capsys):
    d = tmp_path
    m = ("--model", models["vr"])
    (d / "text.png").write_text("hello")
    expect_error(capsys, d, "not an image", "encode", d / "text.png", *m)
    expect_error(capsys, d, "no such file", "encode", d / "missing.png", *m)
    expect_error(capsys, d, "exists (use --force", "encode", d / "a.png", *m)
    expect_error(capsys, d, "output folder", "encode", d / "a.png", "-o", d / "no" / "x.vcd", *m)
    expect_error(capsys, d, "refusing to overwrite the input", "encode", d / "a.png", "-o",
                 d / "a.png", "--force", *m)
    expect_error(capsys, d, "outside this model's trained range", "encode", d / "a.png", "-o",
                 d / "b.vcd", "--lmbda", 3, *m)
    for bad in ("0", "-0.5", "nan"):
        expect_error(capsys, d, "positive", "encode", d / "a.png", "-o", d / "b.vcd",
                     "--bpp", bad, *m)
    expect_error(capsys, d, "quality must lie in [1, 8]", "encode", d / "a.png", "-o",
                 d / "b.vcd", "--quality", 9, *m)
    expect_error(capsys, d, "variable-rate model", "encode", d / "a.png", "-o", d / "b.vcd",
                 "--bpp", 0.5, "--model", models["fixed"])
    expect_error(capsys, d, "unknown model", "encode", d / "a.png", "-o", d / "b.vcd",
                 "--model", "resnet50")
    expect_error(capsys, d, "no such weights file", "encode", d / "a.png", "-o", d / "b.vcd",
                 "--model", d / "none.safetensors")
    expect_error(capsys, d, "cannot load weights", "encode", d / "a.png", "-o", d / "b.vcd",
                 "--model", d / "a.png")
    assert run(capsys, "encode", d / "a.png", "--force", *m)[0] == 0


def test_bad_inputs_decode(models, tmp_path, vcd, capsys):
    d = tmp_path
    m = ("--model", models["vr"])
    data = vcd.read_bytes()
    cases = {
        "trunc.vcd": (data[: len(data) // 2], "truncated"),
        "flip.vcd": (data[:-10] + bytes([data[-10] ^ 0x10]) + data[-9:], "CRC-32 mismatch"),
        "magic.vcd": (b"XYZ" + data[3:], "not a varicodec file"),
        "newer.vcd": (recrc(data[:3] + b"\x07" + data[4:]), "newer"),
        "model_id.vcd": (recrc(data[:5] + b"\xee" + data[6:]), "unknown model id"),
        "absurd.vcd": (recrc(data[:14] + struct.pack(">HH", 65535, 65535) + data[18:]),
                       "exceeds the limit"),
        "empty.vcd": (b"", "not a varicodec file"),
    }
    for name, (payload, pattern) in cases.items():
        (d / name).write_bytes(payload)
        expect_error(capsys, d, pattern, "decode", d / name, *m)
        expect_error(capsys, d, pattern, "info", d / name)
    expect_error(capsys, d, "other hyperprior-ecgbm weights", "decode", vcd, "-o", d / "x.png",
                 "--model", models["other"])
    expect_error(capsys, d, "not 'hyperprior-base'", "decode", vcd, "-o", d / "x.png",
                 "--model", models["fixed"])
    expect_error(capsys, d, "no such file", "decode", d / "missing.vcd", *m)
    expect_error(capsys, d, "not a varicodec file", "decode", d / "a.png", "-o", d / "x.png", *m)
    expect_error(capsys, d, "unknown image file extension", "decode", vcd, "-o", d / "x.xyz", *m)
    expect_error(capsys, d, "output folder", "decode", vcd, "-o", d / "no" / "x.png", *m)
    assert run(capsys, "decode", vcd, *m)[0] == 0
    expect_error(capsys, d, "exists (use --force", "decode", vcd, *m)
    assert run(capsys, "decode", vcd, "--force", *m)[0] == 0


def test_nan_in_the_decoded_image_is_an_error_naming_the_file(models, tmp_path, vcd, capsys,
                                                              monkeypatch):
    """A model that computes NaN gives an error, not a picture with NaN made 0."""
    from varicodec.models import VaricodecModel

    original = VaricodecModel.decompress

    def poisoned(self, *a, **kw):
        out = original(self, *a, **kw)
        out["x_hat"][..., 3, 5] = float("nan")
        return out

    monkeypatch.setattr(VaricodecModel, "decompress", poisoned)
    expect_error(capsys, tmp_path, "a.vcd", "decode", vcd, "-o", tmp_path / "x.png",
                 "--model", models["vr"])
    rc, _, err = run(capsys, "decode", vcd, "-o", tmp_path / "x.png", "--model", models["vr"])
    assert rc == 2 and "3 non-finite values" in err and not (tmp_path / "x.png").exists()


def test_alpha_to_jpeg_leaves_nothing(models, tmp_path, capsys):
    a = np.dstack([rgb(), np.zeros((37, 53), np.uint8)])
    Image.fromarray(a).save(tmp_path / "t.png")
    assert run(capsys, "encode", tmp_path / "t.png", "--model", models["vr"])[0] == 0
    expect_error(capsys, tmp_path, "alpha", "decode", tmp_path / "t.vcd", "-o",
                 tmp_path / "t.jpg", "--model", models["vr"])


# ------------------------------------------------------------------ issue 13
def test_rate_targets_strict_and_json(models, tmp_path, capsys):
    """A missed target: warned on stderr and flagged in --json; --strict makes it exit 3."""
    import json

    Image.fromarray(rgb()).save(tmp_path / "a.png")
    m = ("--model", models["vr"])
    for target in (("--bpp", 100), ("--psnr", 80)):
        rc, out, err = run(capsys, "encode", tmp_path / "a.png", "-o", tmp_path / "a.vcd",
                           "--force", "--json", *target, *m)
        assert rc == 0 and (tmp_path / "a.vcd").is_file()
        record = json.loads(out)
        rcd = record["rate_control"]
        assert rcd["kind"] == target[0][2:] and rcd["target"] == target[1]
        assert rcd["converged"] is False and "out of reach" in rcd["note"]
        assert record["bytes"] == (tmp_path / "a.vcd").stat().st_size
        assert "target missed" in err and "a.png" in err and "Traceback" not in err
        (tmp_path / "a.vcd").unlink()
        before = listing(tmp_path)
        rc, out, err = run(capsys, "encode", tmp_path / "a.png", "-o", tmp_path / "a.vcd",
                           "--strict", *target, *m)
        assert rc == 3 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("varicodec: error: ")
        assert "target missed" in lines[0] and "a.png" in lines[0]
        assert listing(tmp_path) == before
    # a reachable target passes --strict; its JSON says so
    rc, out, _ = run(capsys, "encode", tmp_path / "a.png", "-o", tmp_path / "b.vcd", "--strict",
                     "--json", "--psnr", 5, "--tolerance", 20, *m)
    assert rc == 0 and json.loads(out)["rate_control"]["converged"] is True
    rc, out, _ = run(capsys, "decode", tmp_path / "b.vcd", "--json", *m)
    assert rc == 0 and json.loads(out)["width"] == 53


def test_invalid_tolerances(models, tmp_path, capsys):
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    m = ("--model", models["vr"], "-o", tmp_path / "b.vcd")
    for target, tol, pattern in ((("--bpp", 0.5), -1, "must be in (0, 1)"),
                                 (("--bpp", 0.5), 0, "must be in (0, 1)"),
                                 (("--bpp", 0.5), 1.5, "must be in (0, 1)"),
                                 (("--psnr", 30), -1, "positive"),
                                 (("--psnr", 30), "nan", "positive"),
                                 (("--quality", 3), 0.1, "bpp or psnr target only"),
                                 ((), 0.1, "bpp or psnr target only")):
        expect_error(capsys, tmp_path, pattern, "encode", tmp_path / "a.png", *target,
                     "--tolerance", tol, *m)


def test_messages_name_the_file_once(models, tmp_path, vcd, capsys):
    data = vcd.read_bytes()
    bad = tmp_path / "flip.vcd"
    bad.write_bytes(data[:-10] + bytes([data[-10] ^ 0x10]) + data[-9:])
    for cmd in ("decode", "info"):
        rc, _, err = run(capsys, cmd, bad, "--model", models["vr"])
        assert rc == 2 and err.count("flip.vcd") == 1 and "CRC-32" in err, err
    src = tmp_path / "mixed"
    src.mkdir()
    (src / "x.png").write_text("not an image")
    Image.fromarray(rgb()).save(src / "ok.png")
    rc, _, err = run(capsys, "encode", src, "--model", models["vr"], "--quiet")
    assert rc == 2
    line = next(li for li in err.splitlines() if "error" in li)
    assert line.count("x.png") == 1 and "not an image" in line, line


def test_decode_help_has_a_description(capsys):
    with pytest.raises(SystemExit):
        main(["decode", "--help"])
    out = capsys.readouterr().out
    assert "Decompress a .vcd file" in out and "fingerprint" in out


def test_folder_progress_lines_without_a_terminal(models, tmp_path, capsys, monkeypatch):
    import varicodec.progress as progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(rgb(seed=i)).save(src / f"im{i}.png")
    rc, out, err = run(capsys, "encode", src, "--model", models["vr"], "--quality", 2)
    assert rc == 0
    lines = [li for li in err.splitlines() if li.startswith("encode: ")]
    assert [li.split()[1] for li in lines[:3]] == ["1/3", "2/3", "3/3"], err
    assert "img/s" in lines[0] and "ETA" in lines[0] and "done in" in lines[-1]
    assert out.count(" -> ") == 3 and "3 of 3 files encoded" in out
    rc, out, err = run(capsys, "encode", src, "--model", models["vr"], "--quality", 2,
                       "--force", "--quiet")
    assert rc == 0 and err == ""


def test_models_marks_bundled_weights(tmp_path, capsys, monkeypatch):
    from varicodec.models import registry

    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path / "varicodec" / "weights")
    registry.WEIGHTS_DIR.mkdir(parents=True)
    save_model(tiny_model("hyperprior-bm", 0), registry.WEIGHTS_DIR /
               "hyperprior-bm.safetensors", card={"steps": 12, "recipe": {"name": "r-x"}})
    rc, out, _ = run(capsys, "models")
    lines = out.splitlines()
    assert rc == 0 and [li.split()[0] for li in lines] == registry.list_models()
    marked = [li for li in lines if "bundled" in li]
    assert len(marked) == 1 and marked[0].startswith("hyperprior-bm ")
    assert all(s in marked[0] for s in ("hyperprior-bm.safetensors", "r-x", "12 steps"))


def test_ctrl_c_anywhere_is_one_line(capsys, monkeypatch):
    import varicodec.cli as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    for target in ("build_parser", "_run"):  # while importing/parsing, while coding
        with monkeypatch.context() as mp:
            mp.setattr(cli, target, interrupted)
            rc = main(["models"])
        out, err = capsys.readouterr()
        assert rc == 130 and err == "varicodec: interrupted\n" and out == ""


def test_eval_progress_lines_without_a_terminal(tmp_path, capsys, monkeypatch):
    import varicodec.progress as progress

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    data = tmp_path / "set"
    data.mkdir()
    for i in range(2):
        Image.fromarray(rgb(64, 64, seed=i)).save(data / f"im{i}.png")
    rc, _, err = run(capsys, "eval", "--codec", "jpeg", "--sweep", "50,90", data,
                     "-o", tmp_path / "j.json")
    assert rc == 0, err
    lines = [li for li in err.splitlines() if "img/s" in li]
    assert lines and lines[-1].split(": ")[1].startswith("4/4 img"), err
    rc, _, err = run(capsys, "eval", "--codec", "jpeg", "--sweep", "50", data,
                     "-o", tmp_path / "j.json", "--force", "--quiet")
    assert rc == 0 and "img/s" not in err


def test_tiled_files_from_the_command_line(models, tmp_path, capsys):
    import json

    Image.fromarray(rgb(150, 130)).save(tmp_path / "a.png")
    m = ("--model", models["vr"])
    rc, out, err = run(capsys, "encode", tmp_path / "a.png", "--tile", 64, "--json", *m)
    assert rc == 0, err
    assert json.loads(out)["bytes"] == (tmp_path / "a.vcd").stat().st_size
    rc, out, _ = run(capsys, "info", tmp_path / "a.vcd", "--json")
    assert rc == 0 and json.loads(out)["tiles"]["count"] == 9
    rc, out, _ = run(capsys, "info", tmp_path / "a.vcd")
    assert "count 9, tile 64, margin 16" in out
    assert run(capsys, "decode", tmp_path / "a.vcd", *m)[0] == 0
    assert Image.open(tmp_path / "a.vcd.png").size == (130, 150)
    expect_error(capsys, tmp_path, "tile size", "encode", tmp_path / "a.png", "-o",
                 tmp_path / "b.vcd", "--tile", 32, *m)
    with pytest.raises(SystemExit) as e:  # a usage error, from argparse: one line too
        main(["encode", str(tmp_path / "a.png"), "--tile", "big"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "--tile" in err


def test_standard_input_and_output(models, tmp_path):
    """``-`` reads standard input and writes standard output, end to end in real
    processes (a pipe each way): the same file as from a path, the summary on stderr,
    and a clean error, writing nothing, for what is not an image."""
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    png = (tmp_path / "a.png").read_bytes()
    cmd = [sys.executable, "-m", "varicodec"]
    model = ["--model", models["vr"]]

    def pipe(*argv, data=b""):
        return subprocess.run(cmd + list(argv), input=data, capture_output=True, timeout=300,
                              cwd=tmp_path)

    enc = pipe("encode", "-", "-o", "-", "--quality", "4", *model, data=png)
    assert enc.returncode == 0, enc.stderr
    assert main(["encode", str(tmp_path / "a.png"), "--quality", "4", *model]) == 0
    assert enc.stdout == (tmp_path / "a.vcd").read_bytes()
    assert enc.stderr.decode().startswith("standard input -> standard output  53x37 RGB")
    dec = pipe("decode", "-", "-o", "-", *model, data=enc.stdout)
    assert dec.returncode == 0, dec.stderr
    assert main(["decode", str(tmp_path / "a.vcd"), *model]) == 0
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(dec.stdout))),
                          np.asarray(Image.open(tmp_path / "a.vcd.png")))
    info = pipe("info", "-", "--json", data=enc.stdout)
    assert info.returncode == 0 and b'"width": 53' in info.stdout
    before = listing(tmp_path)
    for argv, data, message in (
            (("encode", "-", "-o", "b.vcd"), b"not an image", "standard input: not an image"),
            (("encode", "-", "-o", "b.vcd"), b"", "standard input: empty"),
            (("encode", "-"), png, "name the output with -o"),
            (("decode", "-", "-o", "b.png"), png, "standard input: not a varicodec file")):
        r = pipe(*argv, *model, data=data)
        err = r.stderr.decode().strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and message in err[0], (argv, err)
        assert r.stdout == b""
    assert listing(tmp_path) == before
    (tmp_path / "shots").mkdir()
    r = pipe("encode", "shots", "-o", "-", *model)
    assert r.returncode == 2 and b"standard output takes one file" in r.stderr
