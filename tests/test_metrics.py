"""Metrics: PSNR, MS-SSIM and Bjøntegaard deltas on hand-checkable cases."""

import math

import numpy as np
import pytest

from varicodec.metrics import bd_psnr, bd_rate, ms_ssim, ms_ssim_db, psnr_db

# a plausible RD curve (bpp, dB), deliberately unsorted
RATES = [0.5, 0.12, 1.6, 0.3, 0.9]
PSNRS = [32.8, 27.6, 40.5, 30.9, 36.7]


def test_psnr_hand_values():
    a = np.full((4, 4, 3), 100, np.uint8)
    assert psnr_db(a, a) == math.inf
    b = a + 1  # MSE 1
    assert psnr_db(a, b) == pytest.approx(20 * math.log10(255), abs=1e-12)
    c = a.copy()
    c[0, 0, 0] = 104  # one error of 4 over 48 values: MSE 16/48
    assert psnr_db(a, c) == pytest.approx(10 * math.log10(255**2 * 3), abs=1e-12)


def test_psnr_rejects_mismatch():
    a = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="shape"):
        psnr_db(a, np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        psnr_db(a, a.astype(np.float32))


def test_ms_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (176, 176, 3), dtype=np.uint8)
    assert ms_ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    assert 0 < ms_ssim(a, b) < 1
    assert math.isnan(ms_ssim(a[:160], b[:160]))  # too small for five scales
    assert ms_ssim_db(0.99) == pytest.approx(20.0)


def test_bd_identical_curves_are_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0, abs=1e-12)
    assert bd_psnr(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0, abs=1e-12)


def test_bd_rate_scaled_rates():
    scaled = [0.9 * r for r in RATES]
    assert bd_rate(RATES, PSNRS, scaled, PSNRS) == pytest.approx(-10.0, abs=1e-9)
    assert bd_rate(scaled, PSNRS, RATES, PSNRS) == pytest.approx(100 / 9, abs=1e-9)
    # in bytes instead of bpp: the unit cancels
    assert bd_rate([r * 1e5 for r in RATES], PSNRS, [r * 0.9e5 for r in RATES],
                   PSNRS) == pytest.approx(-10.0, abs=1e-9)


def test_bd_psnr_shifted_curve():
    assert bd_psnr(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS]) == pytest.approx(0.5, abs=1e-9)


def test_bd_rate_linear_model():
    # log10 R = (D − 30) / 10 for the anchor; the test is 1 dB better everywhere,
    # so at equal D it needs 10^(−0.1) of the anchor's rate.
    d = np.linspace(28, 40, 7)
    r = 10 ** ((d - 30) / 10)
    got = bd_rate(r, d, r, d + 1)
    assert got == pytest.approx((10**-0.1 - 1) * 100, abs=1e-9)


def test_bd_errors():
    with pytest.raises(ValueError, match="overlap"):
        bd_rate([0.1, 0.2], [25, 26], [0.3, 0.4], [30, 31])
    with pytest.raises(ValueError, match="two"):
        bd_rate([0.1], [25], [0.1, 0.2], [25, 26])
    with pytest.raises(ValueError, match="positive"):
        bd_psnr([0, 0.2], [25, 26], [0.1, 0.2], [25, 26])
