"""CompressAI's published operating points: the λ ladder and the Kodak curves.

The one home of these numbers: quality levels (:func:`quality_to_lmbda`), the
rate-control prior (``codec.rate_control``), the registry's reference curves and
``varicodec plot/table --reference`` all read them from here. Plain data, no torch.

Curves: CompressAI's pre-trained MSE models evaluated on the 24 Kodak images with
the real entropy coder on CPU, as published in the CompressAI repository
(https://github.com/InterDigitalInc/CompressAI) under
``results/image/kodak/compressai-<name>_mse_cpu.json``, rounded to 4 / 2 decimals
(the first three are also quoted in this project's ``SPEC.md``). Rate is real
bitstream bpp, PSNR is RGB in dB. Those models were trained on GPUs for millions of
steps. Quality ``q`` of a curve was trained at ``QUALITY_LMBDAS[q - 1]``.
"""

from __future__ import annotations

import math

__all__ = ["KODAK_CURVES", "QUALITY_LMBDAS", "quality_to_lmbda", "lmbda_to_quality"]

#: λ of CompressAI's MSE models, quality 1..8 (loss R + λ·255²·MSE).
QUALITY_LMBDAS: tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)

#: CompressAI model name → quality 1..k → ``(bpp, psnr_db)`` on Kodak
KODAK_CURVES: dict[str, tuple[tuple[float, float], ...]] = {
    "bmshj2018-hyperprior": (
        (0.1313, 27.58), (0.2089, 29.20), (0.3199, 30.97), (0.4784, 32.84),
        (0.6687, 34.53), (0.9388, 36.74), (1.2592, 38.58), (1.6602, 40.56),
    ),
    "mbt2018-mean": (
        (0.1239, 27.70), (0.1980, 29.36), (0.3072, 31.13), (0.4606, 32.95),
        (0.6617, 34.97), (0.9144, 36.91), (1.2342, 38.84), (1.6191, 40.63),
    ),
    "mbt2018": (
        (0.1105, 28.09), (0.1870, 29.65), (0.2877, 31.36), (0.4323, 33.09),
        (0.6388, 35.09), (0.8853, 36.99), (1.2004, 38.93), (1.5873, 40.64),
    ),
    "cheng2020-anchor": (  # qualities 1..6 only
        (0.1196, 28.58), (0.1838, 29.97), (0.2710, 31.34), (0.4174, 33.39),
        (0.5945, 35.12), (0.8057, 36.70),
    ),
}


def quality_to_lmbda(quality: float) -> float:
    """Continuous quality in [1, 8] → λ, log-linear between CompressAI's points."""
    q = float(quality)
    if math.isnan(q) or not 1.0 <= q <= 8.0:
        raise ValueError(f"quality must lie in [1, 8], got {quality}")
    i = min(int(math.floor(q)), 7)
    t = q - i
    lo, hi = math.log(QUALITY_LMBDAS[i - 1]), math.log(QUALITY_LMBDAS[min(i, 7)])
    return math.exp(lo + t * (hi - lo))


def lmbda_to_quality(lmbda: float) -> float:
    """Inverse of :func:`quality_to_lmbda` (clamped to [1, 8])."""
    ll = math.log(lmbda)
    logs = [math.log(v) for v in QUALITY_LMBDAS]
    if ll <= logs[0]:
        return 1.0
    for i in range(7):
        if ll <= logs[i + 1]:
            return i + 1 + (ll - logs[i]) / (logs[i + 1] - logs[i])
    return 8.0
