"""Rate control: the λ code that makes one image hit a target bpp or PSNR.

The search runs over the 16-bit λ code (uniform in ``ln λ``), measuring the
*real* coded size (or the PSNR of the real reconstruction) at each trial. The
analysis transform ``g_a`` runs once per image (``model.cached_analysis``);
each trial costs the hyper-prior, the entropy coder and, for a PSNR target,
the synthesis transform.

Search: start from CompressAI's published hyperprior curve (target → λ), take
a Newton step with that curve's slope (bpp: ``d ln bpp / d ln λ ≈ 0.55``;
PSNR: ``≈ 2.8 dB`` per unit of ``ln λ``), then secant steps, safeguarded by
bisection of the bracket once the target is bracketed. It stops inside the
tolerance (bpp: 2 % relative; PSNR: 0.1 dB) or when the bracket is two
adjacent codes or a range end, and then returns the closest trial with a note.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import VaricodecError
from ..layers import LmbdaRange
from ..quality import KODAK_CURVES, QUALITY_LMBDAS

__all__ = ["DEFAULT_TOLERANCE", "RateControlReport", "RateTargetError", "check_tolerance",
           "search_lmbda_code"]

#: default tolerance per target kind: relative for bpp, dB for PSNR
DEFAULT_TOLERANCE = {"bpp": 0.02, "psnr": 0.1}

# CompressAI's bmshj2018-hyperprior on Kodak, quality 1..8: (λ, bpp, PSNR dB)
_PRIOR = tuple((lm, bpp, psnr) for lm, (bpp, psnr)
               in zip(QUALITY_LMBDAS, KODAK_CURVES["bmshj2018-hyperprior"], strict=True))
_SLOPE = {"bpp": 0.55, "psnr": 2.8}  # per unit of ln λ


class RateTargetError(VaricodecError):
    """A strict encode missed its bpp or PSNR target by more than the tolerance."""

    def __init__(self, report: RateControlReport) -> None:
        super().__init__(f"target missed: {report.summary().removeprefix('rate control: ')}")
        self.report = report


def check_tolerance(kind: str, tolerance: float | None) -> float:
    """The tolerance to use for a ``kind`` target; ``ValueError`` for a meaningless one.

    bpp tolerances are relative (0 < t < 1: 0.02 = ±2 %); PSNR ones are in dB (t > 0).
    """
    if kind not in DEFAULT_TOLERANCE:
        raise ValueError(f"unknown rate-control target {kind!r}")
    if tolerance is None:
        return DEFAULT_TOLERANCE[kind]
    tol = float(tolerance)
    if kind == "bpp" and not 0 < tol < 1:
        raise ValueError(f"bpp tolerance is relative and must be in (0, 1), e.g. 0.02 for "
                         f"±2 %; got {tolerance}")
    if kind == "psnr" and not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"PSNR tolerance is in dB and must be a positive number; got "
                         f"{tolerance}")
    return tol


@dataclass
class RateControlReport:
    """What the search did. ``achieved`` is in the target's unit (bpp or dB)."""

    kind: str
    target: float
    code: int
    achieved: float
    iterations: int
    seconds: float
    converged: bool
    note: str | None = None
    trials: list[tuple[int, float]] = field(default_factory=list)
    tolerance: float | None = None

    def as_dict(self) -> dict:
        """JSON-ready fields (``converged``: the target was met within ``tolerance``)."""
        return {"kind": self.kind, "target": self.target, "achieved": self.achieved,
                "error": self.error, "tolerance": self.tolerance, "converged": self.converged,
                "lmbda_code": self.code, "trials": self.iterations, "seconds": self.seconds,
                "note": self.note}

    @property
    def error(self) -> float:
        """Relative error for bpp, dB for PSNR."""
        if self.kind == "bpp":
            return self.achieved / self.target - 1
        return self.achieved - self.target

    def summary(self) -> str:
        unit = "bpp" if self.kind == "bpp" else "dB"
        err = f"{100 * self.error:+.2f} %" if self.kind == "bpp" else f"{self.error:+.3f} dB"
        text = (f"rate control: target {self.target:g} {unit}, got {self.achieved:.4f} {unit} "
                f"({err}) in {self.iterations} trials, {self.seconds:.2f} s")
        return text + (f"; {self.note}" if self.note else "")


def _prior_lmbda(kind: str, target: float) -> float:
    """λ at which the published curve reaches ``target`` (log-linear, extrapolated)."""
    col = 1 if kind == "bpp" else 2
    xs = [math.log(p[col]) if kind == "bpp" else p[col] for p in _PRIOR]
    ys = [math.log(p[0]) for p in _PRIOR]
    t = math.log(target) if kind == "bpp" else target
    i = 0 if t <= xs[1] else 6 if t >= xs[6] else next(k for k in range(7) if t <= xs[k + 1])
    y = ys[i] + (t - xs[i]) * (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return math.exp(y)


def search_lmbda_code(
    measure: Callable[[int], float],
    kind: str,
    target: float,
    lmbda_range: LmbdaRange,
    tolerance: float | None = None,
    max_trials: int = 24,
) -> RateControlReport:
    """Find the λ code whose ``measure(code)`` (bpp or PSNR dB) is closest to ``target``.

    ``measure`` must increase with the code, at least roughly (both bpp and PSNR
    do); local non-monotonicity of real coded sizes is tolerated.
    """
    tol = check_tolerance(kind, tolerance)
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"the {kind} target must be a positive number, got {target}")
    code_max = LmbdaRange.CODE_MAX
    per_code = lmbda_range._span / code_max  # ln λ per code step
    t0 = time.perf_counter()

    def g(value: float) -> float:  # signed distance in the search domain
        return math.log(max(value, 1e-12) / target) if kind == "bpp" else value - target

    def ok(value: float) -> bool:
        return abs(value / target - 1) <= tol if kind == "bpp" else abs(value - target) <= tol

    trials: dict[int, float] = {}

    def run(code: int) -> float:
        trials[code] = measure(code)
        return trials[code]

    lm0 = min(max(_prior_lmbda(kind, target), lmbda_range.min), lmbda_range.max)
    code = lmbda_range.encode(lm0)
    slope = _SLOPE[kind] * per_code  # search-domain units per code step
    note = None
    converged = False
    last_width = None
    while True:
        value = run(code)
        if ok(value):
            converged = True
            break
        if len(trials) >= max_trials:
            note = f"stopped after {max_trials} trials"
            break
        below = [c for c, v in trials.items() if g(v) < 0]
        above = [c for c, v in trials.items() if g(v) > 0]
        lo = max(below) if below else None
        hi = min((c for c in above if lo is None or c > lo), default=None)
        if lo is not None and hi is not None:
            width = hi - lo
            if width <= 1:
                note = "no lambda code lands within the tolerance; closest one used"
                break
            glo, ghi = g(trials[lo]), g(trials[hi])
            nxt = lo + (hi - lo) * (-glo) / (ghi - glo) if ghi > glo else (lo + hi) / 2
            if last_width is not None and width > last_width / 2:
                nxt = (lo + hi) / 2  # interpolation is not shrinking the bracket fast enough
            last_width = width
            nxt = min(max(round(nxt), lo + 1), hi - 1)
        else:
            # not bracketed yet: Newton step with the best slope estimate
            pts = sorted(trials.items())
            if len(pts) >= 2:
                (c1, v1), (c2, v2) = pts[0], pts[-1]
                s = (g(v2) - g(v1)) / (c2 - c1)
                if s > slope / 10:
                    slope = s
            gv = g(value)
            step = -gv / slope
            step = max(abs(step) * 1.1, 1) * (1 if step > 0 else -1)  # overshoot a little
            nxt = min(max(round(code + step), 0), code_max)
            if nxt in trials:
                end = "highest" if gv < 0 else "lowest"
                note = (f"target out of reach: the model's {end} lambda "
                        f"({lmbda_range.decode(nxt):.4g}) gives the closest result")
                break
        code = int(nxt)
        if code in trials:
            note = "no lambda code lands within the tolerance; closest one used"
            break
    # every trial was checked with ok() as it was run, so an unconverged search has no
    # trial within the tolerance
    best = min(trials, key=lambda c: abs(g(trials[c])))
    return RateControlReport(kind=kind, target=target, code=best, achieved=trials[best],
                             iterations=len(trials), seconds=time.perf_counter() - t0,
                             converged=converged, note=note, trials=list(trials.items()),
                             tolerance=tol)
