"""The one metrics module: image distortion and Bjøntegaard deltas.

Distortion is measured on what a user gets back, 8-bit RGB:

* :func:`psnr_db` — ``10·log10(255² / MSE)`` over all pixels and the three
  channels of two ``H×W×3`` uint8 arrays (model outputs are rounded to uint8
  first, see :func:`varicodec.imageio.to_uint8`).
* :func:`ms_ssim` — multi-scale SSIM (Wang et al. 2003) via ``pytorch_msssim``
  with its standard five scales, 11×11 Gaussian window (σ 1.5), ``data_range=255``
  and float32 arithmetic (as CompressAI; float64 differs by ~1e-7 and is 4× slower);
  images whose shorter side is ≤ 160 px are too small for five scales and give
  ``nan``.

Bjøntegaard deltas (VCEG-M33) compare two rate–distortion curves over the
range where both are defined. Like the JVET common-test-conditions tool
they interpolate with a piecewise cubic Hermite polynomial (PCHIP),
which is monotone and does not overshoot, instead of the original cubic fit:

* :func:`bd_rate` — mean difference of ``log10(rate)`` as a function of PSNR
  over the overlapping PSNR interval, returned as a percentage
  ``(10^Δ − 1)·100``; negative means the test curve needs fewer bits.
* :func:`bd_psnr` — mean PSNR difference (dB) as a function of ``log10(rate)``
  over the overlapping rate interval; positive means the test curve is better.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

# imported where used: encoding reports PSNR, which should not pay for these (~0.3 s)
if TYPE_CHECKING:
    import torch
    from scipy.interpolate import PchipInterpolator

__all__ = ["psnr_db", "ms_ssim", "ms_ssim_db", "bd_rate", "bd_psnr", "MS_SSIM_MIN_SIDE"]

#: ``pytorch_msssim`` needs the shorter side > (11 − 1)·2⁴ pixels for five scales.
MS_SSIM_MIN_SIDE = 161


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")


def psnr_db(reference: np.ndarray, decoded: np.ndarray) -> float:
    """PSNR in dB of two ``H×W×3`` uint8 images (``inf`` when identical)."""
    _check_pair(reference, decoded)
    mse = float(np.mean((reference.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ms_ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """MS-SSIM in [0, 1] of two ``H×W×3`` uint8 images; ``nan`` if smaller than 161 px."""
    _check_pair(reference, decoded)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan

    import torch
    from pytorch_msssim import ms_ssim as _ms_ssim

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(a, dtype=np.float32)).permute(2, 0, 1)[None]

    with torch.no_grad():
        return float(_ms_ssim(t(reference), t(decoded), data_range=255.0, size_average=True))


def ms_ssim_db(value: float) -> float:
    """MS-SSIM on a decibel scale, ``−10·log10(1 − MS-SSIM)`` (how RD plots show it)."""
    return math.inf if value >= 1 else -10.0 * math.log10(1.0 - value)


def _curve(x: Sequence[float], y: Sequence[float], what: str) -> PchipInterpolator:
    """PCHIP of ``y(x)`` through points sorted by ``x`` (repeated ``x`` averaged)."""
    from scipy.interpolate import PchipInterpolator

    x_arr = np.asarray(x, dtype=np.float64)
    y_arr = np.asarray(y, dtype=np.float64)
    if x_arr.shape != y_arr.shape or x_arr.ndim != 1:
        raise ValueError(f"{what}: rates and distortions must be equal-length 1-D sequences")
    if x_arr.size < 2:
        raise ValueError(f"{what}: a curve needs at least two points, got {x_arr.size}")
    if not (np.isfinite(x_arr).all() and np.isfinite(y_arr).all()):
        raise ValueError(f"{what}: points must be finite")
    xs, inverse = np.unique(x_arr, return_inverse=True)
    if xs.size < 2:
        raise ValueError(f"{what}: a curve needs at least two distinct points")
    ys = np.bincount(inverse, weights=y_arr) / np.bincount(inverse)
    return PchipInterpolator(xs, ys, extrapolate=False)


def _mean_gap(f1: PchipInterpolator, f2: PchipInterpolator, what: str) -> float:
    lo = max(f1.x[0], f2.x[0])
    hi = min(f1.x[-1], f2.x[-1])
    if not hi > lo:
        raise ValueError(f"{what}: the two curves do not overlap")
    return float((f2.integrate(lo, hi) - f1.integrate(lo, hi)) / (hi - lo))


def _check_rates(rates: Sequence[float], what: str) -> np.ndarray:
    r = np.asarray(rates, dtype=np.float64)
    if (r <= 0).any():
        raise ValueError(f"{what}: rates must be positive")
    return r


def bd_rate(
    rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
    rate_test: Sequence[float], psnr_test: Sequence[float],
) -> float:
    """Bjøntegaard delta rate of ``test`` against ``anchor``, in percent.

    Rates in any positive unit (bpp, bytes), distortion in dB. The mean of
    ``log10 R_test(D) − log10 R_anchor(D)`` over the common distortion range,
    returned as ``(10^mean − 1)·100``: scaling every rate of the anchor by
    0.9 gives exactly −10 %.
    """
    la = np.log10(_check_rates(rate_anchor, "bd_rate anchor"))
    lt = np.log10(_check_rates(rate_test, "bd_rate test"))
    fa = _curve(psnr_anchor, la, "bd_rate anchor")
    ft = _curve(psnr_test, lt, "bd_rate test")
    return (10.0 ** _mean_gap(fa, ft, "bd_rate") - 1.0) * 100.0


def bd_psnr(
    rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
    rate_test: Sequence[float], psnr_test: Sequence[float],
) -> float:
    """Bjøntegaard delta PSNR of ``test`` against ``anchor``, in dB (positive = better).

    The mean of ``D_test(log10 R) − D_anchor(log10 R)`` over the common rate range.
    """
    la = np.log10(_check_rates(rate_anchor, "bd_psnr anchor"))
    lt = np.log10(_check_rates(rate_test, "bd_psnr test"))
    fa = _curve(la, psnr_anchor, "bd_psnr anchor")
    ft = _curve(lt, psnr_test, "bd_psnr test")
    return _mean_gap(fa, ft, "bd_psnr")
