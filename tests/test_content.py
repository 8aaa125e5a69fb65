"""The bundled model codes a real photograph: quality floors, rate bands, correlation.

These are the tests that fail when the codec stops coding the picture (an encoder that
ignores its input, a decoder that drops a stream): random-weight models reconstruct at
about 5 dB whatever happens, a trained model does not.

The floors belong to one set of bundled weights (their sha256). When the default model
is replaced, the test says so; re-measure with ``python tests/test_content.py`` and put
the new figures (minus the margins) in ``FLOORS``: the floors move up with the model.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varicodec.codec import decode, encode_image
from varicodec.models import registry

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: 128×96 crop of scikit-image's ``chelsea.png`` (CC0), see tests/data/README.md
PHOTO = Path(__file__).parent / "data" / "chelsea-crop.png"
MODEL = "hyperprior-ecgbm"

#: sha256 of the bundled weights → quality → (bpp, PSNR dB) measured on PHOTO with
#: ``python tests/test_content.py`` (1 torch thread; identical with 2)
MEASURED = {
    "50b44561ccaf82a4363032744e1d78a587858162aa8d1d4bb002f58eb04520ee": {
        1: (0.4277, 27.425), 4: (0.9844, 30.933), 8: (1.9076, 32.473),
    },
}
PSNR_MARGIN_DB = 0.5   # the floor: today's PSNR minus this
BPP_BAND = 0.10        # the rate: within ±10 % of today's
MIN_CORRELATION = 0.97  # Pearson, decoded vs input pixels (q1: 0.9725, same command)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB"))


@pytest.fixture(scope="module")
def measured() -> dict[int, tuple[float, float]]:
    path = registry.bundled_weights(MODEL)
    assert path is not None, f"no bundled weights for {MODEL}"
    sha = _sha256(Path(path))
    if sha not in MEASURED:
        pytest.fail(f"the bundled {MODEL} weights changed (sha256 {sha[:12]}…): re-measure "
                    "with `python tests/test_content.py` and add them to MEASURED")
    return MEASURED[sha]


@pytest.fixture(scope="module")
def model():
    from varicodec import load_model

    return load_model(MODEL)


@pytest.mark.parametrize("quality", [1, 4, 8])
def test_bundled_model_codes_the_photo(photo, model, measured, quality):
    bpp, psnr_db = measured[quality]
    r = encode_image(photo, model, quality=quality)
    out = np.asarray(decode(r.data, model).convert("RGB"))
    assert out.shape == photo.shape
    assert r.bpp == len(r.data) * 8 / (photo.shape[0] * photo.shape[1])
    assert abs(r.bpp / bpp - 1) <= BPP_BAND, f"q{quality}: {r.bpp:.4f} bpp, today {bpp}"
    assert r.psnr_db >= psnr_db - PSNR_MARGIN_DB, f"q{quality}: {r.psnr_db:.2f} dB < floor"
    mse = np.mean((out.astype(np.float64) - photo) ** 2)
    assert 10 * np.log10(255**2 / mse) == pytest.approx(r.psnr_db, abs=1e-9)
    corr = np.corrcoef(out.ravel().astype(np.float64), photo.ravel().astype(np.float64))[0, 1]
    assert corr >= MIN_CORRELATION, f"q{quality}: decoded image correlates {corr:.3f}"


def test_quality_orders_rate_and_distortion(photo, model):
    rs = [encode_image(photo, model, quality=q) for q in (1, 4, 8)]
    assert [r.bpp for r in rs] == sorted(r.bpp for r in rs) and rs[0].bpp < rs[-1].bpp
    assert rs[0].psnr_db + 2 < rs[-1].psnr_db


def test_another_picture_gives_another_stream(photo, model):
    """The stream depends on the picture, and decoding it gives that picture."""
    flipped = np.ascontiguousarray(photo[:, ::-1])
    a = encode_image(photo, model, quality=4)
    b = encode_image(flipped, model, quality=4)
    assert a.data != b.data
    out = np.asarray(decode(b.data, model).convert("RGB")).astype(np.float64)
    err_right = np.mean((out - flipped) ** 2)
    err_wrong = np.mean((out - photo) ** 2)
    assert err_right * 5 < err_wrong


def test_demo_runs_on_the_photo(tmp_path, measured):
    """``varicodec demo`` end to end, in a fresh process (it leaves with ``os._exit``),
    in an empty folder that it must leave empty."""
    p = subprocess.run([sys.executable, "-m", "varicodec", "demo", str(PHOTO), "--quality",
                        "1", "8"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = [line.split() for line in p.stdout.splitlines() if line.split()[:1] in (["1.00"],
                                                                                  ["8.00"])]
    assert len(rows) == 2, p.stdout
    for row, q in zip(rows, (1, 8)):
        bpp, psnr_db = float(row[3]), float(row[4])
        assert abs(bpp / measured[q][0] - 1) <= BPP_BAND and psnr_db >= measured[q][1] - 0.5
        # JPEG and WebP beside it: files of about our size (the closest of their
        # integer qualities; a 128×96 crop leaves them steps of a few %), decoded
        ours, jpeg, webp = int(row[2]), int(row[7]), int(row[9])
        assert abs(jpeg / ours - 1) < 0.15 and abs(webp / ours - 1) < 0.15, row
        assert 20 < float(row[8]) < 60 and 20 < float(row[10]) < 60, row
    assert MODEL in p.stdout and "128×96" in p.stdout and "JPEG 4:2:0" in p.stdout
    assert not any(tmp_path.iterdir())


def test_demo_codes_a_real_photo_by_default(monkeypatch):
    """Without an image the demo codes Matplotlib's photo of Grace Hopper, and the
    synthetic picture only where that file is missing, saying why."""
    from varicodec import demo
    from varicodec.serve import samples

    photo, what = demo._default_image()
    assert photo.shape == (600, 512, 3) and "Grace Hopper" in what

    def missing(name):
        raise ValueError(f"sample {name!r} is not available here (gone)")

    monkeypatch.setattr(samples, "load_sample", missing)
    picture, what = demo._default_image()
    assert np.array_equal(picture, demo.synthetic_image()) and "not available" in what


def test_shared_data_codes(data_dir):
    """Reads ../shared/data (skipped, with the reason, where it is absent): the checksum
    list matches a Kodak file and the bundled model codes a crop of it."""
    sums = dict(reversed(line.split(maxsplit=1)) for line in
                (data_dir / "SHA256SUMS").read_text().splitlines() if line.strip())
    path = data_dir / "kodak" / "kodim23.png"
    assert sums["kodak/kodim23.png"] == _sha256(path)
    img = np.asarray(Image.open(path).convert("RGB"))
    h, w = img.shape[:2]
    crop = img[h // 2 - 128:h // 2 + 128, w // 2 - 128:w // 2 + 128]
    from varicodec import load_model

    r = encode_image(crop, load_model(MODEL), quality=4)
    # 0.4614 bpp, 33.18 dB with the weights in MEASURED (`python tests/test_content.py`)
    assert 0.3 < r.bpp < 0.65 and r.psnr_db > 31.0


if __name__ == "__main__":  # print today's figures for MEASURED (and the checks' others)
    import torch

    from varicodec import load_model

    torch.set_num_threads(1)
    img = np.asarray(Image.open(PHOTO).convert("RGB"))
    m = load_model(MODEL)
    rows = {}
    for q in (1, 4, 8):
        r = encode_image(img, m, quality=q)
        out = np.asarray(decode(r.data, m).convert("RGB")).astype(np.float64)
        corr = np.corrcoef(out.ravel(), img.ravel().astype(np.float64))[0, 1]
        rows[q] = (r.bpp, r.psnr_db, corr)
    print(f'"{_sha256(Path(registry.bundled_weights(MODEL)))}": {{')
    print("    " + ", ".join(f"{q}: ({b:.4f}, {p:.3f})" for q, (b, p, _) in rows.items()) + ",")
    print("},")
    print("correlation " + ", ".join(f"q{q} {c:.4f}" for q, (_, _, c) in rows.items()))
    kodim = Path(__file__).resolve().parents[2] / "shared" / "data" / "kodak" / "kodim23.png"
    if kodim.is_file():
        k = np.asarray(Image.open(kodim).convert("RGB"))
        h, w = k.shape[:2]
        r = encode_image(k[h // 2 - 128:h // 2 + 128, w // 2 - 128:w // 2 + 128], m, quality=4)
        print(f"kodim23 centre 256×256, q4: {r.bpp:.4f} bpp, {r.psnr_db:.2f} dB")
