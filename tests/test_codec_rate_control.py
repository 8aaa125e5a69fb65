"""Rate control: the search on synthetic curves, and real coding on a tiny model."""

import math

import numpy as np
import pytest
from conftest import load_benchmark
from PIL import Image
from tiny_models import tiny_model

from varicodec.codec import encode_image, info
from varicodec.codec.rate_control import search_lmbda_code
from varicodec.layers import LmbdaRange
from varicodec.models import save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RANGE = LmbdaRange(0.0018, 0.18)


def synthetic_bpp(code: int, scale: float = 0.5, wobble: float = 0.004) -> float:
    """bpp ∝ λ^0.7 with a small deterministic non-monotone ripple, as real sizes have."""
    ll = math.log(RANGE.decode(code))
    return scale * math.exp(0.7 * (ll - math.log(0.013))) * (1 + wobble * math.sin(code))


@pytest.mark.parametrize("target", [0.05, 0.1, 0.25, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("scale", [0.2, 0.5, 2.0])
def test_bpp_search_converges(target, scale):
    r = search_lmbda_code(lambda c: synthetic_bpp(c, scale), "bpp", target, RANGE)
    reachable = synthetic_bpp(0, scale) * 0.98 <= target <= synthetic_bpp(65535, scale) * 1.02
    assert r.converged == reachable
    if r.converged:
        assert abs(r.error) <= 0.02 and r.iterations <= 8 and r.note is None
    else:
        assert "out of reach" in r.note and r.code in (0, 65535)


@pytest.mark.parametrize("target", [28.0, 31.0, 35.0, 38.0])
def test_psnr_search_converges(target):
    def psnr(code):  # ≈ 2.8 dB per unit of ln λ, offset from the prior
        return 33.0 + 2.5 * (math.log(RANGE.decode(code)) - math.log(0.02))

    r = search_lmbda_code(psnr, "psnr", target, RANGE)
    assert r.converged and abs(r.error) <= 0.1 and r.iterations <= 6


def test_unreachable_precision_gives_closest():
    # a staircase: no code lands within 0.1 % of the target, the closest is returned
    def stairs(code):
        return 0.1 * (1 + code // 4096)

    r = search_lmbda_code(stairs, "bpp", 0.55, RANGE, tolerance=0.001)
    assert not r.converged and r.note
    assert r.achieved == pytest.approx(0.5) or r.achieved == pytest.approx(0.6)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    m = tiny_model("hyperprior-ecgbm", 0)
    return save_model(m, tmp_path_factory.mktemp("m") / "vr.safetensors")


def smooth(h, w, seed=0):
    rng = np.random.default_rng(seed)
    small = Image.fromarray((rng.random((5, 5, 3)) * 255).astype(np.uint8))
    return np.asarray(small.resize((w, h), Image.BICUBIC))


def test_real_bpp_target_one_analysis(model_path, target=1.0):
    from varicodec.codec import resolve_model

    model = resolve_model(model_path)
    calls = []
    hook = model.net.g_a[0].register_forward_hook(lambda *a: calls.append(1))
    try:
        r = encode_image(smooth(64, 64), model, bpp=target, compute_psnr=False)
    finally:
        hook.remove()
    rc = r.rate_control
    assert len(calls) == 1, "rate control must run the analysis transform once"
    assert rc is not None and rc.iterations >= 1 and rc.seconds > 0
    assert rc.converged and abs(r.bpp / target - 1) <= 0.02, rc.summary()
    assert r.bpp == pytest.approx(rc.achieved)
    assert info(r.data)["lmbda_code"] == rc.code


def test_real_unreachable_bpp(model_path):
    r = encode_image(smooth(64, 64), model_path, bpp=50.0, compute_psnr=False)
    assert not r.rate_control.converged and "out of reach" in r.rate_control.note
    assert r.lmbda_code == 65535


@pytest.mark.parametrize("target", [29.0, 31.5])
def test_real_psnr_target_searches(target):
    """A PSNR target on a real photograph with the bundled trained model: the search
    has to move λ (its prior's first guess misses by 0.4 dB and more) and lands within
    the tolerance, and the PSNR it reports is that of the file it returns."""
    from pathlib import Path

    from varicodec import load_model
    from varicodec.codec import decode

    photo = np.asarray(Image.open(Path(__file__).parent / "data" / "chelsea-crop.png"))
    model = load_model("hyperprior-ecgbm")
    r = encode_image(photo, model, psnr=target, tolerance=0.1)
    rc = r.rate_control
    assert rc.kind == "psnr" and rc.converged and rc.iterations >= 2, rc.summary()
    assert abs(r.psnr_db - target) <= 0.1 and r.psnr_db == pytest.approx(rc.achieved)
    assert abs(rc.trials[0][1] - target) > 0.1  # the first trial alone would not do
    out = np.asarray(decode(r.data, model).convert("RGB")).astype(np.float64)
    assert 10 * np.log10(255**2 / np.mean((out - photo) ** 2)) == pytest.approx(r.psnr_db)


def test_benchmark_script(model_path, tmp_path):
    for i in range(2):
        Image.fromarray(smooth(64, 64, seed=i)).save(tmp_path / f"im{i}.png")
    rc_bench = load_benchmark("rate_control")
    result = rc_bench.run(sorted(tmp_path.glob("*.png")), model_path, targets=(1.0,))
    table = rc_bench.format_table(result)
    assert "| 1 | 2 | 0 |" in table
    for s in result["summary"].values():
        assert s["worst_abs_error"] <= 0.02 and s["time_ratio"] > 0
