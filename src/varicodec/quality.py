"""Quality levels and λ: CompressAI's eight MSE trade-off factors."""

from __future__ import annotations

import math

__all__ = ["QUALITY_LMBDAS", "quality_to_lmbda", "lmbda_to_quality"]

#: λ of CompressAI's MSE models, quality 1..8 (loss R + λ·255²·MSE).
QUALITY_LMBDAS: tuple[float, ...] = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


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
