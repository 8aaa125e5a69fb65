"""Decode anywhere (issue 14): cross-kernel matrix, rate and decode-time cost of the guard.

Four measurements, each printing JSON (``-o`` writes it too)::

    # how far h_s's scales move between kernel sets (same ẑ), and unguarded index flips;
    # --at indexed: the scales every build_indexes call of a full decode sees (the end of
    # the joint model's chain), by scale range, and the guard's margin over the noise
    python benchmarks/portability.py noise --names kodim01 kodim05 kodim13 --qualities 1 4

    # the guard's rate: guard-stream bytes / file bytes, every image × quality, as
    # written (format 4 on: hash or positions mode) and in positions mode (formats 2-3);
    # --margin [--lambda-scaled]: with another margin
    python benchmarks/portability.py rate --images ../shared/data/kodak --qualities 1 2 3 4 5 6 7 8

    # decode time with and without the guard (same file, alternating, median)
    python benchmarks/portability.py time --images ../shared/data/kodak --limit 4

    # every (encoder, decoder) pair of configurations: encoders are processes with
    # ONEDNN_MAX_CPU_ISA = default / AVX2 / SSE41 (ATEN_CPU_CAPABILITY=default with
    # SSE41); each decoder process decodes every file under 1 and 2 threads ×
    # sparse / masked-dense × channels-last / NCHW
    python benchmarks/portability.py matrix --images ../shared/data/kodak \
        --names kodim01 kodim05 kodim13 --qualities 1 4

``--unguarded`` in ``matrix`` also writes files with the guard off
(``index_margin=0``, symbol check still on): what the files would do without it.
``--model`` takes any model spec (default: the bundled ``hyperprior-ecgbm``).
Not yet here: GPU↔CPU pairs (the ``.vcd`` API codes on the CPU; a GPU run needs the
model-level ``compress``/``decompress`` on ``cuda`` with TF32 off, see
docs/results/portability.md).
Images are read from outside the repository; nothing is copied into it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch

#: kernel sets, as environment variables of a process: oneDNN's convolutions, MKL's
#: matrix products (the joint model's context and entropy-parameter products) and
#: ATen's vectorised element-wise kernels as an older CPU would pick them
ISAS = {
    "default": {},
    "AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
              "ATEN_CPU_CAPABILITY": "default"},
}
#: decoder configurations inside one process: (threads, sparse, channels_last)
LOCAL = [(t, sp, cl) for t in (1, 2) for sp in (True, False) for cl in (True, False)]


def _images(folder: str, names: list[str] | None, limit: int | None) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        sys.exit(f"image folder {d} not found (Kodak: ../shared/data/kodak); nothing measured")
    paths = sorted(p for p in d.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if names:
        paths = [p for p in paths if p.stem in names]
    return paths[:limit] if limit else paths


@functools.cache
def _model(spec: str | None):
    """The model of ``spec``, loaded once per process (main's fixed-rate check and the
    command share it)."""
    from varicodec.codec.pretrained import resolve_model

    return resolve_model(spec)


def _quality(m, q: float) -> float | None:
    """The rate option of an encode: ``q`` for a variable-rate model; a fixed-rate model
    codes at its own λ and takes none."""
    return q if m.variable_rate else None


def _fixed_rate_quality(spec: str | None) -> float | None:
    """A fixed-rate model's own quality (from its λ), or None for a variable-rate one."""
    m = _model(spec)
    if m.variable_rate:
        return None
    from varicodec.quality import lmbda_to_quality

    return round(lmbda_to_quality(m.lmbda), 3)


def _emit(obj, out: str | None) -> None:
    text = json.dumps(obj, indent=1)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


# ---------------------------------------------------------------------- rate
def cmd_rate(a: argparse.Namespace) -> None:
    """Guard bytes of every image × quality as written (format version 4: the shorter
    of hash and positions mode) and what positions mode alone (versions 2-3, before
    hash mode) would write for the same guarded latents: ``_choose_hash`` is watched
    for the set G it is given, whose positions-mode stream is then packed (one encode
    per file instead of two; the y stream of that file differs by the few forced
    latents outside G, not counted)."""
    import varicodec.models.guard as gm
    from varicodec.codec.api import _z_shape, encode_image
    from varicodec.codec.format import Container
    from varicodec.quality import QUALITY_LMBDAS, quality_to_lmbda

    m = _model(a.model)
    seen: list[np.ndarray] = []
    choose = gm._choose_hash

    def watched(numbers, dist, margin):
        seen.append(numbers[dist < margin])
        return choose(numbers, dist, margin)

    gm._choose_hash = watched
    rows = []
    for p in _images(a.images, a.names, a.limit):
        for q in a.qualities:
            seen.clear()
            if a.margin is None:
                data = encode_image(p, m, quality=_quality(m, q), compute_psnr=False).data
            else:  # another margin: fixed, or a.margin·(λ / λ_min)^½ with --lambda-scaled
                lm = quality_to_lmbda(q)
                margin = a.margin * ((lm / QUALITY_LMBDAS[0]) ** 0.5 if a.lambda_scaled else 1)
                data = _encode(encode_image, m, p, q, {"index_margin": margin})
            c = Container.unpack(data)
            guard = len(c.guard or b"")
            per_item = m._latents_per_item(_z_shape(m, c.width, c.height))
            _, named = gm.unpack_guard(c.guard or bytes(4), per_item)
            hashed = isinstance(named, gm.HashSet)
            old_guard = 4 + (len(gm._positions_tail(seen[0])) if seen else 0)
            assert len(seen) <= 1 and (hashed or old_guard == guard)
            rest = len(data) - guard - 1
            extra = {}
            if a.positions_encode:  # the whole file in positions mode: y stream too
                old = Container.unpack(_encode(encode_image, m, p, q,
                                               {"guard_mode": "positions"}))
                extra = {"positions_file_y_bytes": len(old.y), "y_bytes": len(c.y),
                         "positions_file_guard_bytes": len(old.guard or b"")}
            rows.append({
                **extra,
                "image": p.stem, "quality": q, "bytes": len(data), "guard_bytes": guard,
                "guarded_latents": len(seen[0]) if seen else 0,
                "mode": "hash" if hashed else "positions",
                "hash_bits": named.bits if hashed else None,
                "hashes": len(named.values) if hashed else None,
                "overhead_pct": 100 * (guard + 1) / rest,
                "positions_guard_bytes": old_guard,
                "positions_overhead_pct": 100 * (old_guard + 1) / rest,
            })
            print(f"{p.stem} q{q}: {len(data)} B, guard {guard} B "
                  f"({'hash' if hashed else 'positions'}; positions mode {old_guard} B)",
                  file=sys.stderr)
    gm._choose_hash = choose
    per_q = {}
    for q in a.qualities:
        sel = [r for r in rows if r["quality"] == q]
        per_q[str(q)] = {
            "mean_pct": float(np.mean([r["overhead_pct"] for r in sel])),
            "max_pct": float(np.max([r["overhead_pct"] for r in sel])),
            "mean_bytes": float(np.mean([r["bytes"] for r in sel])),
            "mean_guard_bytes": float(np.mean([r["guard_bytes"] for r in sel])),
            "hash_mode_files": sum(r["mode"] == "hash" for r in sel),
            "positions_mean_pct": float(np.mean([r["positions_overhead_pct"] for r in sel])),
            "positions_max_pct": float(np.max([r["positions_overhead_pct"] for r in sel])),
            "positions_mean_guard_bytes": float(np.mean([r["positions_guard_bytes"]
                                                         for r in sel])),
        }
    _emit({"model": m.name, "fingerprint": _fingerprint(m),
           "margin": _margin() if a.margin is None else a.margin,
           "lambda_scaled_margin": bool(a.lambda_scaled),
           "per_quality": per_q, "rows": rows}, a.output)


def _fingerprint(m) -> str:
    from varicodec.models import weights_fingerprint

    return weights_fingerprint(m).hex()


def _margin() -> float:
    from varicodec.models.guard import INDEX_MARGIN

    return INDEX_MARGIN


# ---------------------------------------------------------------------- time
def _guard_pair(m, p: Path, q: float):
    """One image coded with its guard and without it, as decoder inputs: (the guarded
    file's container, its strings, the unguarded strings, the z shape). The baseline is
    what decoding did before the guard: a file coded without it (index_margin=0), no
    guard stream, no symbol check. (A guarded file decoded without its guard stream
    would desynchronise: not a baseline.)"""
    from varicodec.codec.api import _guarded, _z_shape, encode_image
    from varicodec.codec.format import Container

    c = Container.unpack(encode_image(p, m, quality=_quality(m, q), compute_psnr=False).data)
    u = Container.unpack(_encode(encode_image, m, p, q, {"index_margin": 0.0}))
    zh, zw = _z_shape(m, c.width, c.height)
    n_y = m.config["M"] * zh * zw * 16
    with_guard = [[_guarded(c.y, n_y)], [c.z]] + ([[c.side]] if m.gated else [])
    with_guard += [[c.guard]]
    base = [[_guarded(u.y, n_y)], [u.z]] + ([[u.side]] if m.gated else [])
    return c, with_guard, base, (zh, zw)


def cmd_time(a: argparse.Namespace) -> None:
    from varicodec.models.guard import (
        HASH_THRESHOLD,
        HashSet,
        IndexGuard,
        _hash_rule,
        _near_boundaries,
        _scale_indexes,
        unpack_guard,
    )

    torch.set_num_threads(a.threads)
    if a.retain:  # as the varicodec command does in its process
        from varicodec.util import retain_freed_memory

        retain_freed_memory()
    m = _model(a.model)
    rows = []
    for p in _images(a.images, a.names, a.limit):
        for q in a.qualities:
            c, with_guard, base, (zh, zw) = _guard_pair(m, p, q)
            times: dict[str, list[float]] = {"guard": [], "none": []}
            with torch.inference_mode():
                m.decompress(with_guard, (zh, zw), c.lmbda_code)  # warm-up
                for i in range(a.repeats):
                    pairs = [("guard", with_guard), ("none", base)]
                    for key, strings in (pairs if i % 2 else pairs[::-1]):
                        t0 = time.perf_counter()
                        m.decompress(strings, (zh, zw), c.lmbda_code)
                        times[key].append(time.perf_counter() - t0)
            g, n = float(np.median(times["guard"])), float(np.median(times["none"]))
            # the guard's own decoder work, alone: parse the stream, CRC the symbols and,
            # in hash mode, the nearest boundary of every scale and the hash rule
            per_item = m._latents_per_item((zh, zw))
            gc = m.net.gaussian_conditional
            scales = torch.exp(torch.empty(per_item).uniform_(-2.2, 5.5))
            idx = _scale_indexes(gc, scales)  # build_indexes: the decoder's work anyway
            t0 = time.perf_counter()
            _, named = unpack_guard(c.guard, per_item)
            if isinstance(named, HashSet):
                pos, _, dist = _near_boundaries(gc, scales, idx, HASH_THRESHOLD)
                _hash_rule(pos.numpy(), dist.numpy(), named)
            ig = IndexGuard(gc)
            ig.symbols = [torch.zeros(per_item, dtype=torch.int32)]
            ig.checks(1)
            work = time.perf_counter() - t0
            rows.append({"image": p.stem, "quality": q, "guard_s": g, "none_s": n,
                         "guard_mode": "hash" if isinstance(named, HashSet) else "positions",
                         "overhead_pct": 100 * (g / n - 1), "guard_work_s": work,
                         "guard_work_pct": 100 * work / n})
            print(f"{p.stem} q{q}: {g:.3f} s vs {n:.3f} s", file=sys.stderr)
    ov = [r["overhead_pct"] for r in rows]
    _emit({"model": m.name, "threads": a.threads, "repeats": a.repeats,
           "retain_freed_memory": a.retain,
           "mean_overhead_pct": float(np.mean(ov)),
           "total_overhead_pct": 100 * (sum(r["guard_s"] for r in rows)
                                        / sum(r["none_s"] for r in rows) - 1),
           "median_overhead_pct": float(np.median(ov)),
           "max_guard_work_pct": max(r["guard_work_pct"] for r in rows),
           "rows": rows}, a.output)


# -------------------------------------------------------------------- matrix
def cmd_worker(a: argparse.Namespace) -> None:
    """In a process with one kernel set: encode (``--encode``) or decode every file."""
    from varicodec.codec.api import decode_image, encode_image
    from varicodec.errors import DesyncError
    from varicodec.layers import sparse_execution

    m = _model(a.model)
    work = Path(a.work)
    if a.encode:
        torch.set_num_threads(2)
        for p in _images(a.images, a.names, a.limit):
            for q in a.qualities:
                for margin in ([None, 0.0] if a.unguarded else [None]):
                    tag = "g" if margin is None else "u"
                    kw = {} if margin is None else {"index_margin": margin}
                    data = _encode(encode_image, m, p, q, kw)
                    (work / f"{a.name}.{tag}.{p.stem}.q{q}.vcd").write_bytes(data)
        return
    results = []
    files = sorted(work.glob("*.vcd"))
    for threads, sparse, cl in ([(2, True, None)] if a.quick else LOCAL):
        torch.set_num_threads(threads)
        with sparse_execution(m, sparse, channels_last=cl):
            for f in files:
                enc, tag, *_ = f.name.split(".")
                if tag == "u" and (threads, sparse, cl) != LOCAL[-1] and not a.quick:
                    continue  # unguarded files: one decoder configuration is enough
                row = {"file": f.name, "decoder": a.name, "threads": threads,
                       "sparse": sparse, "channels_last": cl, **_file_guard(m, f)}
                try:
                    with torch.inference_mode():
                        image, _ = decode_image(f.read_bytes(), m)
                    px = np.asarray(image)
                    np.save(work / f"{f.stem}.{a.name}.{threads}{int(sparse)}{int(bool(cl))}.npy",
                            px)
                    row["status"] = "ok"
                    row["crc"] = zlib.crc32(px.tobytes())
                except DesyncError:
                    row["status"] = "desync detected"
                results.append(row)
    (work / f"result.{a.name}.json").write_text(json.dumps(results))


def _file_guard(m, f: Path) -> dict:
    """A file's format version and how its guard stream names the guarded latents."""
    from varicodec.codec.api import _z_shape
    from varicodec.codec.format import Container
    from varicodec.models.guard import HashSet, unpack_guard

    data = f.read_bytes()
    c = Container.unpack(data)
    if c.guard is None or len(c.guard) == 4:
        mode = "none" if c.guard is None else "check only"
    else:
        _, named = unpack_guard(c.guard, m._latents_per_item(_z_shape(m, c.width, c.height)))
        mode = "hash" if isinstance(named, HashSet) else "positions"
    return {"version": data[3], "guard_mode": mode}


def _encode(encode_image, m, p, q, kw) -> bytes:
    if not kw:
        return encode_image(p, m, quality=_quality(m, q), compute_psnr=False).data
    orig = m.compress
    m.compress = lambda x, lmbda=None: orig(x, lmbda, **kw)
    try:
        return encode_image(p, m, quality=_quality(m, q), compute_psnr=False).data
    finally:
        del m.compress


def cmd_matrix(a: argparse.Namespace) -> None:
    isas = a.isas or list(ISAS)
    with tempfile.TemporaryDirectory() as tmp:
        common = [sys.executable, __file__, "worker", "--images", a.images, "--work", tmp,
                  "--qualities", *map(str, a.qualities)]
        common += ["--names", *a.names] if a.names else []
        common += ["--limit", str(a.limit)] if a.limit else []
        common += ["--model", a.model] if a.model else []
        for isa in isas:
            env = {**os.environ, **ISAS[isa]}
            t0 = time.perf_counter()
            subprocess.run(common + ["--name", isa, "--encode"]
                           + (["--unguarded"] if a.unguarded else []), env=env, check=True)
            print(f"encoded with {isa}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        for isa in isas:
            env = {**os.environ, **ISAS[isa]}
            t0 = time.perf_counter()
            subprocess.run(common + ["--name", isa] + (["--quick"] if a.quick else []),
                           env=env, check=True)
            print(f"decoded with {isa}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        rows = [r for isa in isas
                for r in json.loads((Path(tmp) / f"result.{isa}.json").read_text())]
        # reference: each file decoded by the process that wrote it, 2 threads, sparse
        ref_cfg = (2, True, None if a.quick else True)
        ref = {r["file"]: r for r in rows if r["decoder"] == r["file"].split(".")[0]
               and (r["threads"], r["sparse"], r["channels_last"]) == ref_cfg}
        work = Path(tmp)
        for r in rows:
            if r["status"] != "ok":
                continue
            f = r["file"]
            stem = f.removesuffix(".vcd")
            mine = np.load(work / f"{stem}.{r['decoder']}.{r['threads']}{int(r['sparse'])}"
                                  f"{int(bool(r['channels_last']))}.npy").astype(int)
            rr = ref.get(f)
            if rr is not None and rr["status"] == "ok":
                theirs = np.load(work / f"{stem}.{rr['decoder']}.21"
                                        f"{int(bool(rr['channels_last']))}.npy").astype(int)
                d = np.abs(mine - theirs)
                r["max_diff"] = int(d.max())
                r["pixels_differing_pct"] = float(100 * (d.max(axis=-1) > 0).mean())
                mse = float((d.astype(float) ** 2).mean())
                r["psnr_vs_reference_db"] = (float("inf") if mse == 0
                                             else 10 * np.log10(255**2 / mse))
    guarded = [r for r in rows if r["file"].split(".")[1] == "g"]
    unguarded = [r for r in rows if r["file"].split(".")[1] == "u"]
    summary = {
        "format_versions": sorted({r["version"] for r in rows}),
        "guarded_files_in_hash_mode": len({(r["file"]) for r in guarded
                                          if r["guard_mode"] == "hash"}),
        "guarded_files": len({r["file"] for r in guarded}),
        "guarded_decodes": len(guarded),
        "guarded_desyncs": sum(r["status"] != "ok" for r in guarded),
        "guarded_max_pixel_diff": max((r.get("max_diff", 0) for r in guarded), default=None),
        "guarded_min_psnr_vs_reference_db": min((r.get("psnr_vs_reference_db", float("inf"))
                                                 for r in guarded), default=None),
        "unguarded_decodes": len(unguarded),
        "unguarded_desyncs_detected": sum(r["status"] != "ok" for r in unguarded),
        "unguarded_desync_files": sorted({f"{r['file']} by {r['decoder']}" for r in unguarded
                                          if r["status"] != "ok"}),
    }
    m = _model(a.model)
    _emit({"model": m.name, "fingerprint": _fingerprint(m), "isas": isas,
           "local_configs": LOCAL, "summary": summary, "rows": rows}, a.output)


# --------------------------------------------------------------------- noise
def cmd_noise_worker(a: argparse.Namespace) -> None:
    """With this process's kernels, for every saved file: ``--at hs``, the outputs of
    ``h_s(ẑ)`` (the scales of the hyperprior and mean models, the parameters the joint
    model's entropy-parameter network reads); ``--at indexed``, the raw scales every
    ``build_indexes`` call of a full decode sees, in coding order (for the joint model
    the end of the chain context model → entropy parameters → next wavefront), and
    whether the decode passed the symbol check."""
    import varicodec.models.guard as gm
    from varicodec.codec.api import decode_image
    from varicodec.codec.format import Container
    from varicodec.errors import DesyncError

    m = _model(a.model)
    torch.set_num_threads(2)
    status = {}
    for f in sorted(Path(a.work).glob("*.vcd")):
        if a.at == "indexed":
            seen: list[torch.Tensor] = []
            indexes = gm._scale_indexes

            def recorded(gc, scales, seen=seen, indexes=indexes):
                seen.append(scales.detach().reshape(-1).to("cpu", torch.float64))
                return indexes(gc, scales)

            gm._scale_indexes = recorded
            try:
                with torch.inference_mode():
                    decode_image(f.read_bytes(), m)
                status[f.stem] = "ok"
            except DesyncError:
                status[f.stem] = "desync detected"
            finally:
                gm._scale_indexes = indexes
            scales = torch.cat(seen)
        else:
            c = Container.unpack(f.read_bytes())
            f_ = m.downsampling_factor
            shape = (-(-c.height // f_), -(-c.width // f_))
            with torch.inference_mode():
                z_hat = m.net.entropy_bottleneck.decompress([c.z], shape)
                for g in m._hs_gates():
                    g.forced_mask = None
                params = m.net.h_s(z_hat)
            scales = params[:, : m.config["M"]] if m.arch != "hyperprior" else params
        np.save(Path(a.work) / f"{f.stem}.{a.name}.npy", scales.double().numpy())
    (Path(a.work) / f"status.{a.name}.json").write_text(json.dumps(status))


def cmd_noise(a: argparse.Namespace) -> None:
    """How far the scales move between kernel sets: every pair of kernel sets, on
    files written with the default kernels (``--at``: see ``noise-worker``)."""
    import varicodec.models.guard as gm
    from varicodec.codec.api import encode_image
    from varicodec.models.guard import (
        ABSOLUTE_MARGIN,
        ABSOLUTE_MARGIN_ARCHS,
        INDEX_MARGIN,
        absolute_margin,
    )
    from varicodec.quality import quality_to_lmbda

    m = _model(a.model)
    table = m.net.gaussian_conditional.scale_table[:-1].double()

    def floor(stem: str) -> float:
        """The absolute margin of a file ``<image>.q<quality>``."""
        if m.arch not in ABSOLUTE_MARGIN_ARCHS:
            return 0.0
        q = float(stem.rpartition(".q")[2])
        return absolute_margin(quality_to_lmbda(q) if m.variable_rate else m.lmbda)

    names = list(ISAS)
    with tempfile.TemporaryDirectory() as tmp:
        for p in _images(a.images, a.names, a.limit):
            for q in a.qualities:
                data = encode_image(p, m, quality=_quality(m, q), compute_psnr=False).data
                (Path(tmp) / f"{p.stem}.q{q}.vcd").write_bytes(data)
        cmd = [sys.executable, __file__, "noise-worker", "--work", tmp, "--at", a.at]
        cmd += ["--model", a.model] if a.model else []
        status = {}
        for isa, env in ISAS.items():
            subprocess.run(cmd + ["--name", isa], env={**os.environ, **env}, check=True)
            status[isa] = json.loads((Path(tmp) / f"status.{isa}.json").read_text())
        rows = []
        for f in sorted(Path(tmp).glob("*.vcd")):
            got = {isa: torch.from_numpy(np.load(Path(tmp) / f"{f.stem}.{isa}.npy"))
                   for isa in names}
            # per kernel set, once: its indexes, and each scale's nearest boundary
            index = {isa: (s.float()[..., None] > table.float()).sum(-1)
                     for isa, s in got.items()}
            nearest = {isa: table[gm._nearest_boundary(s, table)[0]].view(s.shape)
                       for isa, s in got.items()}
            dists = {isa: (s[..., None] / table - 1).abs().amin(-1) for isa, s in got.items()}
            for i, x in enumerate(names):
                for y in names[i + 1:]:
                    ref, other = got[x], got[y]
                    if ref.shape != other.shape:
                        rows.append({"file": f.stem, "pair": f"{x}/{y}", "error": "shapes"})
                        continue
                    ok = status[x].get(f.stem, "ok") == status[y].get(f.stem, "ok") == "ok"
                    diff = (other - ref).abs()
                    rel = diff / ref.abs().clamp_min(float(table[0]))
                    k, k2, dist = index[x], index[y], dists[x]
                    by_scale = {}
                    for lo, hi in ((0, 0.2), (0.2, 0.5), (0.5, 1), (1, 3), (3, 10),
                                   (10, float("inf"))):
                        sel = (ref >= lo) & (ref < hi)
                        if sel.any():
                            by_scale[f"{lo:g}-{hi:g}"] = {
                                "latents": int(sel.sum()), "max_abs_diff": float(diff[sel].max()),
                                "max_rel_diff": float(rel[sel].max())}
                    # the guard's margin at each latent's nearest boundary over its
                    # difference, for latents inside the table's span (a scale far below
                    # the first boundary has index 0 however it moves): the smallest is
                    # the safety factor of this pair (> 1: no flip possible)
                    margin = (INDEX_MARGIN * nearest[x]).clamp_min(floor(f.stem))
                    moved = (diff > 0) & (ref >= table[0] * (1 - 1e-3))
                    factor = float((margin[moved] / diff[moved]).min()) if moved.any() else None
                    rows.append({
                        "file": f.stem, "pair": f"{x}/{y}", "both_decodes_ok": ok,
                        "max_rel_diff": float(rel.max()), "by_scale": by_scale,
                        "margin_factor": factor,
                        "p99_99_rel_diff": float(rel.quantile(0.9999)) if rel.numel() < 2**24
                        else None,
                        "index_flips": int((k != k2).sum()), "latents": ref.numel(),
                        **{f"within_{w:g}": int((dist < w).sum())
                           for w in (1e-5, 2e-5, 5e-5, 1e-4, 2e-4)}})
    clean = [r for r in rows if r.get("both_decodes_ok")]
    factors = [r["margin_factor"] for r in clean if r["margin_factor"] is not None]
    _emit({"model": m.name, "at": a.at, "decode_status": status,
           "margin": {"relative": INDEX_MARGIN, "absolute_at_lambda_max": ABSOLUTE_MARGIN
                      if m.arch in ABSOLUTE_MARGIN_ARCHS else 0.0},
           "min_margin_factor": min(factors) if factors else None,
           "max_rel_diff": max(r["max_rel_diff"] for r in clean) if clean else None,
           "index_flips_unguarded": sum(r["index_flips"] for r in clean),
           "rows": rows}, a.output)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("rate", "time", "matrix", "worker", "noise", "noise-worker"):
        p = sub.add_parser(name)
        p.add_argument("--images", default=str(Path(__file__).resolve().parents[2]
                                               / "shared" / "data" / "kodak"))
        p.add_argument("--names", nargs="*")
        p.add_argument("--limit", type=int)
        p.add_argument("--qualities", type=float, nargs="+", default=None,
                       help="qualities of a variable-rate model (default 1 4 8)")
        p.add_argument("--model")
        p.add_argument("-o", "--output")
        p.set_defaults(func={"rate": cmd_rate, "time": cmd_time, "matrix": cmd_matrix,
                             "worker": cmd_worker, "noise": cmd_noise,
                             "noise-worker": cmd_noise_worker}[name])
        if name == "rate":
            p.add_argument("--positions-encode", action="store_true",
                           help="also encode each file in positions mode (y stream sizes)")
            p.add_argument("--margin", type=float,
                           help="encode with this guard margin instead of the default")
            p.add_argument("--lambda-scaled", action="store_true",
                           help="with --margin: margin·(λ/λ_q1)^½ at each quality")
        if name == "time":
            p.add_argument("--threads", type=int, default=2)
            p.add_argument("--repeats", type=int, default=3)
            p.add_argument("--retain", action="store_true",
                           help="keep freed memory as the varicodec command does "
                                "(util.retain_freed_memory); faster decodes")
        if name in ("matrix", "worker"):
            p.add_argument("--unguarded", action="store_true")
            p.add_argument("--quick", action="store_true", help="one decoder configuration")
        if name == "matrix":
            p.add_argument("--isas", nargs="*", choices=list(ISAS))
        if name in ("noise", "noise-worker"):
            p.add_argument("--at", choices=("hs", "indexed"), default="hs",
                           help="h_s outputs, or the scales every build_indexes call "
                                "of a full decode sees (the end of the joint chain)")
        if name in ("worker", "noise-worker"):
            p.add_argument("--work", required=True)
            p.add_argument("--name", required=True)
            p.add_argument("--encode", action="store_true")
    a = ap.parse_args(argv)
    own = _fixed_rate_quality(a.model) if a.cmd not in ("worker", "noise-worker") else None
    if own is not None:  # one file per image, at the model's λ (named by its quality)
        if a.qualities not in (None, [own]):
            print(f"portability: {a.model} is fixed-rate (quality {own:g}); "
                  f"--qualities {' '.join(f'{q:g}' for q in a.qualities)} ignored",
                  file=sys.stderr)
        a.qualities = [own]
    a.qualities = a.qualities or [1.0, 4.0, 8.0]
    a.func(a)


if __name__ == "__main__":
    main()
