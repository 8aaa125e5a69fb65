"""The paper's tables, as Markdown, from results files.

Sections (each appears when its inputs are present):

1. **Curves** — every results file: points, rate range, BD-rate / BD-PSNR
   against an anchor curve (``--anchor LABEL``; default the ``jpeg`` codec
   when present) and, for our models, against CompressAI's published curve of
   the same architecture.
2. **The paper's table** — one table for every architecture with a ``base`` and an
   ``ecg`` set: PSNR drop % and FLOP reduction × per quality 1–8 (and the mean
   sparsity), each row next to the poster's row of the same architecture
   (:data:`POSTER_TABLE`), the layout of the poster's Table 1.
3. **Against the dense models, λ by λ** — for each architecture, every ``ecg``,
   ``bm`` and ``ecgbm`` result against the ``base`` set, and ``ecgbm`` against ``bm``
   (ECG on the universal model), per quality (points matched by λ): PSNR drop in %, FLOP
   reduction × (encoder, decoder, both), mean sparsity over gated layers; the paper's
   Table 1.
4. **Variable rate against the fixed set** — each variable-rate model
   (``bm``, ``ecgbm``) against ``base`` (and ``ecg``) of its architecture:
   BD-rate, BD-PSNR, and the storage saving of one model against the fixed
   set (bytes on disk).
5. **BD-rate matrix** (``matrix=True``) — every curve against every other.
6. **Rate points** (``points=True``) — every point of every curve: setting,
   bpp (real and estimated), PSNR, MS-SSIM, times, FLOPs, sparsity.

PSNR drop % = ``(PSNR_base − PSNR_x) / PSNR_base · 100``; FLOP reduction =
``FLOPs_base / FLOPs_x`` at the same λ, FLOPs as measured per image; time × =
``time_base / time_x`` (wall clock; only meaningful when both ran on the same
machine under the same load — check the files' ``environment``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..metrics import bd_psnr, bd_rate
from ..quality import QUALITY_LMBDAS
from .reference import PUBLISHED_KODAK, reference_results
from .results import curve

__all__ = ["POSTER_TABLE", "make_tables"]

#: The poster's Table 1 (Yin et al., ICASSP 2022; ../shared/seed): ECG on each fixed-rate
#: model, quality 1..8 → (PSNR drop %, FLOP reduction ×). Reference figures, not results.
POSTER_TABLE: dict[str, dict[str, tuple[float, ...]]] = {
    "hyperprior": {
        "psnr_drop": (0, 0.346, 0.228, 0.269, 0.336, 0, 0, 0.216),
        "flop_reduction": (2.54, 2.86, 2.60, 2.54, 2.54, 2.07, 2.14, 2.03),
    },
    "mean": {
        "psnr_drop": (0.39, 0.22, 0.77, 0.69, 0.37, 0.61, 0.71, 0.78),
        "flop_reduction": (2.34, 2.50, 2.56, 2.68, 2.33, 2.12, 2.12, 2.24),
    },
    "joint": {
        "psnr_drop": (0.207, 0.335, 0.437, 0.807, 0.465, 0.150, 0.354, 0.553),
        "flop_reduction": (2.43, 2.67, 2.48, 2.23, 2.29, 2.02, 2.06, 2.02),
    },
}


def _f(v: float | None, fmt: str, unit: str = "") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, fmt) + unit


def _bd(anchor: dict, test: dict) -> tuple[float | None, float | None]:
    ra, da = curve(anchor)
    rt, dt = curve(test)
    try:
        return bd_rate(ra, da, rt, dt), bd_psnr(ra, da, rt, dt)
    except ValueError:  # fewer than two points, or no overlap
        return None, None


def _key(result: dict) -> tuple[str, str] | None:
    m = result.get("model") or {}
    if result.get("kind") != "model" or "arch" not in m:
        return None
    return m["arch"], m["variant"]


def _match(base: dict, other: dict) -> list[tuple[dict, dict]]:
    pairs = []
    for p in other["points"]:
        lm = p.get("lmbda")
        if lm is None:
            continue
        for b in base["points"]:
            if b.get("lmbda") is not None and abs(b["lmbda"] - lm) <= 1e-3 * lm:
                pairs.append((b, p))
                break
    return pairs


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def _curves_section(results: Sequence[dict], anchor: dict | None) -> list[str]:
    head = "| curve | kind | points | bpp range | PSNR range (dB) |"
    sep = "|---|---|---|---|---|"
    if anchor is not None:
        head += f" BD-rate vs {anchor['label']} | BD-PSNR vs {anchor['label']} |"
        sep += "---|---|"
    head += " BD-rate vs CompressAI (published) |"
    sep += "---|"
    lines = ["## Curves", ""]
    if anchor is not None:
        lines += [f"Anchor: **{anchor['label']}**. BD-rate < 0 and BD-PSNR > 0 mean "
                  "better than the anchor (Bjøntegaard, PCHIP, overlapping range).", ""]
    lines += [head, sep]
    for r in results:
        bpp, psnr = curve(r)
        row = (f"| {r['label']} | {r.get('kind', '?')} | {len(r['points'])} | "
               f"{_f(min(bpp, default=None), '.3f')}–{_f(max(bpp, default=None), '.3f')} | "
               f"{_f(min(psnr, default=None), '.2f')}–{_f(max(psnr, default=None), '.2f')} |")
        if anchor is r:
            row += " (anchor) | (anchor) |"
        elif anchor is not None:
            rate, dpsnr = _bd(anchor, r)
            row += f" {_f(rate, '+.2f', ' %')} | {_f(dpsnr, '+.3f', ' dB')} |"
        k = _key(r)
        ref = "n/a"
        if k is not None and k[0] in PUBLISHED_KODAK:
            rate, _ = _bd(reference_results(k[0]), r)
            ref = _f(rate, "+.2f", " %")
        lines.append(row + f" {ref} |")
    return lines + [""]


#: (dense, other) variant pairs of :func:`_gating_section`: everything against the dense
#: fixed-rate set, and the universal gated model against its dense universal twin.
_GATING_PAIRS = (("base", "ecg"), ("base", "bm"), ("base", "ecgbm"), ("bm", "ecgbm"))


def _gating_section(by_key: dict[tuple[str, str], dict]) -> list[str]:
    lines: list[str] = []
    for (arch, variant), gated in by_key.items():
        for dense_variant, other in _GATING_PAIRS:
            if variant == other and (arch, dense_variant) in by_key:
                lines += _gating_pair(arch, by_key[(arch, dense_variant)], gated)
    if lines:
        lines = ["## Against the dense models, λ by λ", "", *lines]
    return lines


def _gating_pair(arch: str, base: dict, gated: dict) -> list[str]:
    pairs = _match(base, gated)
    if not pairs:
        return []
    lines = [
        f"### {arch}: {gated['label']} against {base['label']}", "",
        "| q | λ | bpp base | bpp | PSNR base (dB) | PSNR (dB) | PSNR drop % | "
        "FLOP × enc | FLOP × dec | FLOP × total | sparsity | time × enc | time × dec |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b, p in pairs:
        drop = ((b["psnr_db"] - p["psnr_db"]) / b["psnr_db"] * 100
                if b.get("psnr_db") and p.get("psnr_db") else None)
        tot_b = (b.get("encoder_flops") or 0) + (b.get("decoder_flops") or 0)
        tot_p = (p.get("encoder_flops") or 0) + (p.get("decoder_flops") or 0)
        lines.append(
            f"| {_f(p.get('quality'), '.2f')} | {p['lmbda']:.4g} | {_f(b.get('bpp'), '.3f')} | "
            f"{_f(p.get('bpp'), '.3f')} | {_f(b.get('psnr_db'), '.2f')} | "
            f"{_f(p.get('psnr_db'), '.2f')} | {_f(drop, '.2f')} | "
            f"{_f(_ratio(b.get('encoder_flops'), p.get('encoder_flops')), '.2f')} | "
            f"{_f(_ratio(b.get('decoder_flops'), p.get('decoder_flops')), '.2f')} | "
            f"{_f(_ratio(tot_b, tot_p), '.2f')} | {_f(p.get('sparsity_mean'), '.3f')} | "
            f"{_f(_ratio(b.get('encode_s'), p.get('encode_s')), '.2f')} | "
            f"{_f(_ratio(b.get('decode_s'), p.get('decode_s')), '.2f')} |"
        )
    rate, dpsnr = _bd(base, gated)
    lines += ["", f"BD-rate against {base['label']}: {_f(rate, '+.2f', ' %')}, "
              f"BD-PSNR {_f(dpsnr, '+.3f', ' dB')}.", ""]
    return lines


def _quality_of(lmbda: float | None) -> int | None:
    """CompressAI quality 1..8 of ``lmbda`` (within 0.1 %), else ``None``."""
    if lmbda is None:
        return None
    for q, lq in enumerate(QUALITY_LMBDAS, 1):
        if abs(lq - lmbda) <= 1e-3 * lq:
            return q
    return None


def _paper_section(by_key: dict[tuple[str, str], dict]) -> list[str]:
    """The poster's Table 1 layout: per architecture, PSNR drop and FLOP reduction of the
    ``ecg`` set against the ``base`` set at each quality, next to the poster's rows."""
    qs = range(1, len(QUALITY_LMBDAS) + 1)
    rows: list[str] = []
    for (arch, variant), ecg in by_key.items():
        base = by_key.get((arch, "base"))
        if variant != "ecg" or base is None:
            continue
        drop: dict[int, float | None] = {}
        flops: dict[int, float | None] = {}
        sparsity: dict[int, float | None] = {}
        for b, p in _match(base, ecg):
            q = _quality_of(p["lmbda"])
            if q is None:
                continue
            drop[q] = ((b["psnr_db"] - p["psnr_db"]) / b["psnr_db"] * 100
                       if b.get("psnr_db") and p.get("psnr_db") else None)
            tot_b = (b.get("encoder_flops") or 0) + (b.get("decoder_flops") or 0)
            tot_p = (p.get("encoder_flops") or 0) + (p.get("decoder_flops") or 0)
            flops[q] = _ratio(tot_b, tot_p)
            sparsity[q] = p.get("sparsity_mean")
        poster = POSTER_TABLE.get(arch)

        def row(what: str, values, fmt: str, arch: str = arch) -> str:
            return f"| {arch} | {what} | " + " | ".join(_f(values.get(q), fmt) for q in qs) + " |"

        if poster:
            rows.append(row("PSNR drop % (poster)", dict(zip(qs, poster["psnr_drop"])), ".3g"))
        rows.append(row(f"PSNR drop % ({ecg['label']})", drop, ".2f"))
        if poster:
            rows.append(row("FLOP reduction × (poster)",
                            dict(zip(qs, poster["flop_reduction"])), ".2f"))
        rows.append(row(f"FLOP reduction × ({ecg['label']})", flops, ".2f"))
        rows.append(row(f"sparsity ({ecg['label']})", sparsity, ".3f"))
    if not rows:
        return []
    return ["## The paper's table: ECG against the dense fixed-rate models", "",
            "PSNR drop % = (PSNR base − PSNR ecg) / PSNR base at the same λ; FLOP reduction = "
            "FLOPs of base / FLOPs of ecg (encoder + decoder, as executed). Poster rows: "
            "Yin et al., ICASSP 2022.", "",
            "| model | figure | " + " | ".join(f"q{q}" for q in qs) + " |",
            "|---|---|" + "---|" * len(qs), *rows, ""]


def _variable_rate_section(by_key: dict[tuple[str, str], dict]) -> list[str]:
    rows: list[str] = []
    for (arch, variant), vr in by_key.items():
        if variant not in ("bm", "ecgbm"):
            continue
        for fixed_variant in ("base", "ecg"):
            fixed = by_key.get((arch, fixed_variant))
            if fixed is None:
                continue
            rate, dpsnr = _bd(fixed, vr)
            sparsity = [p["sparsity_mean"] for p in vr["points"]
                        if p.get("sparsity_mean") is not None]
            vr_bytes = (vr.get("model") or {}).get("bytes_on_disk")
            fx = fixed.get("model") or {}
            fixed_bytes, n_fixed = fx.get("bytes_on_disk"), fx.get("models")
            saving = (1 - vr_bytes / fixed_bytes) * 100 if vr_bytes and fixed_bytes else None
            mean_s = sum(sparsity) / len(sparsity) if sparsity else None
            rows.append(
                f"| {arch} | {vr['label']} | {fixed['label']} ({n_fixed} models) | "
                f"{_f(rate, '+.2f', ' %')} | {_f(dpsnr, '+.3f', ' dB')} | {_f(mean_s, '.3f')} | "
                f"{vr_bytes if vr_bytes else 'n/a'} | {fixed_bytes if fixed_bytes else 'n/a'} | "
                f"{_f(saving, '.1f', ' %')} |"
            )
    if not rows:
        return []
    return [
        "## Variable rate against the fixed set", "",
        "| arch | variable-rate model | fixed set | BD-rate | BD-PSNR | mean sparsity | "
        "bytes (one model) | bytes (fixed set) | storage saving |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows, "",
    ]


def continuity(result: dict) -> dict | None:
    """Is a variable-rate curve continuous? Points sorted by λ: counts of steps where the
    mean rate or PSNR goes down (reversals), and the largest rate step between neighbours
    relative to the rate range (a gap). ``None`` for fewer than three λ points."""
    pts = sorted((p for p in result["points"] if p.get("lmbda") is not None
                  and p.get("bpp") is not None and p.get("psnr_db") is not None),
                 key=lambda p: p["lmbda"])
    if len(pts) < 3:
        return None
    bpp = [p["bpp"] for p in pts]
    psnr = [p["psnr_db"] for p in pts]
    steps = [b - a for a, b in zip(bpp, bpp[1:])]
    span = max(bpp) - min(bpp)
    return {"points": len(pts), "rate_reversals": sum(d <= 0 for d in steps),
            "psnr_reversals": sum(b <= a for a, b in zip(psnr, psnr[1:])),
            "largest_step_bpp": max(steps),
            "largest_step_share": max(steps) / span if span else 0.0,
            "bpp_range": (min(bpp), max(bpp))}


def _continuity_section(results: Sequence[dict]) -> list[str]:
    rows = []
    for r in results:
        if not (r.get("model") or {}).get("variable_rate"):
            continue
        c = continuity(r)
        if c is None:
            continue
        rows.append(f"| {r['label']} | {c['points']} | {c['bpp_range'][0]:.3f}–"
                    f"{c['bpp_range'][1]:.3f} | {c['rate_reversals']} | {c['psnr_reversals']} | "
                    f"{c['largest_step_bpp']:.4f} ({c['largest_step_share'] * 100:.1f} % of the "
                    "range) |")
    if not rows:
        return []
    return ["## Continuity of variable-rate curves", "",
            "Points sorted by λ; a reversal is a step where the mean rate (or PSNR) does not "
            "increase; the largest step is the biggest rate gap between neighbouring λ.", "",
            "| curve | λ points | bpp range | rate reversals | PSNR reversals | largest step |",
            "|---|---|---|---|---|---|", *rows, ""]


def _matrix_section(results: Sequence[dict]) -> list[str]:
    labels = [r["label"] for r in results]
    lines = ["## BD-rate matrix", "",
             "BD-rate (%) of the row's curve against the column's (negative: the row needs "
             "fewer bits for the same PSNR), each pair over its own overlapping PSNR range.", "",
             "| test \\ anchor | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for r in results:
        cells = ["—" if a is r else _f(_bd(a, r)[0], "+.1f") for a in results]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _points_section(results: Sequence[dict]) -> list[str]:
    lines = ["## Rate points", "",
             "Means over the images. Times are wall clock per image on the machine in each "
             "file's `environment`.", ""]
    for r in results:
        has_model = r.get("kind") == "model"
        head = "| setting | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) | encode s | decode s |"
        sep = "|---|---|---|---|---|---|---|"
        if has_model:
            head += " bpp estimate | GFLOPs enc | GFLOPs dec | sparsity |"
            sep += "---|---|---|---|"
        lines += [f"### {r['label']}", "", head, sep]
        for p in r["points"]:
            setting = ", ".join(f"{k} {v:g}" for k, v in (p.get("setting") or {}).items())
            if not setting and p.get("lmbda") is not None:
                setting = f"lmbda {p['lmbda']:g}"
            elif not setting and p.get("quality") is not None:
                setting = f"quality {p['quality']:g}"
            row = (f"| {setting} | {_f(p.get('bpp'), '.4f')} | {_f(p.get('psnr_db'), '.2f')} | "
                   f"{_f(p.get('ms_ssim'), '.4f')} | {_f(p.get('ms_ssim_db'), '.2f')} | "
                   f"{_f(p.get('encode_s'), '.3f')} | {_f(p.get('decode_s'), '.3f')} |")
            if has_model:
                ef, df = p.get("encoder_flops"), p.get("decoder_flops")
                row += (f" {_f(p.get('bpp_estimate'), '.4f')} | "
                        f"{_f(ef / 1e9 if ef else None, '.2f')} | "
                        f"{_f(df / 1e9 if df else None, '.2f')} | "
                        f"{_f(p.get('sparsity_mean'), '.3f')} |")
            lines.append(row)
        lines.append("")
    return lines


def make_tables(results: Sequence[dict], anchor: str | None = None,
                points: bool = False, matrix: bool = False) -> str:
    """The Markdown tables for ``results`` (loaded results files); ``matrix`` adds
    the BD-rate of every pair of curves, ``points`` every rate point of every curve."""
    results = list(results)
    if not results:
        raise ValueError("no results to tabulate")
    anchor_result = None
    if anchor is not None:
        anchor_result = next((r for r in results if r["label"] == anchor), None)
        if anchor_result is None:
            raise ValueError(f"no curve labelled {anchor!r}; have "
                             f"{', '.join(r['label'] for r in results)}")
    else:
        anchor_result = next((r for r in results if (r.get("codec") or {}).get("name") == "jpeg"),
                             None)
    by_key: dict[tuple[str, str], dict] = {}
    notes: list[str] = []
    for r in results:
        k = _key(r)
        if k is None:
            continue
        if k in by_key:
            notes.append(f"- {r['label']}: a second {k[0]}-{k[1]} curve; sections 2–4 use "
                         f"{by_key[k]['label']}.")
            continue
        by_key[k] = r
    lines = _curves_section(results, anchor_result)
    lines += _paper_section(by_key)
    lines += _gating_section(by_key)
    lines += _variable_rate_section(by_key)
    lines += _continuity_section(results)
    if matrix:
        lines += _matrix_section(results)
    if points:
        lines += _points_section(results)
    untrained = [r["label"] for r in results if (r.get("model") or {}).get("trained") is False]
    if untrained:
        notes.append(f"- untrained (randomly initialised) models: {', '.join(untrained)}.")
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines).rstrip() + "\n"
