"""What glibc's ``malloc`` settings cost and save: encode/decode time, system time and
peak memory of one-image coding under each setting, in fresh processes, interleaved.

Each setting is a set of ``mallopt`` calls made at the start of a worker process (the
``varicodec`` command makes its own in ``main``: ``util.retain_freed_memory``). A worker
loads the model, codes the images once, then times ``--repeats`` rounds of encoding and
decoding each; it reports the medians, its system CPU time and its peak RSS. Workers
of the settings take turns, ``--rounds`` times, in a rotating order, so that a change in
the machine's load falls on all of them; figures are the medians over rounds, and the
ratios are against ``system`` (no call) and ``shipped`` (what the command does) of the
same run.

    python benchmarks/allocator.py                           # Kodak kodim01-04, q4, 2 threads
    python benchmarks/allocator.py --threads 1 --json docs/results/startup/allocator-1t.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from varicodec.util import _M_MMAP_THRESHOLD, _M_TOP_PAD, _M_TRIM_THRESHOLD

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
MIB = 1 << 20

#: setting name → ``mallopt`` calls ``(parameter, value)``; ``shipped`` is
#: ``varicodec.util.retain_freed_memory`` itself (the command's own setting), called in
#: the worker
SETTINGS: dict[str, tuple[tuple[int, int], ...] | None] = {
    "system": (),
    "shipped": None,
    "retain96": ((_M_MMAP_THRESHOLD, 96 * MIB), (_M_TRIM_THRESHOLD, 96 * MIB)),  # sessions 5-20
    "retain512-pad256": ((_M_MMAP_THRESHOLD, 96 * MIB), (_M_TRIM_THRESHOLD, 512 * MIB),
                         (_M_TOP_PAD, 256 * MIB)),
    "pad256": ((_M_TOP_PAD, 256 * MIB),),  # the pad without the retention
}


def worker(setting: str, images: list[str], model: str | None, quality: float,
           repeats: int, threads: int) -> dict:
    """Runs in a fresh process: apply ``setting``, then time coding ``images``."""
    import ctypes
    import resource

    from varicodec.util import _libc_function, retain_freed_memory

    if setting == "shipped":
        took = retain_freed_memory()
    else:
        mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
        took = all(mallopt(p, v) == 1 for p, v in SETTINGS[setting] or ())
    import torch
    from PIL import Image

    from varicodec.codec.api import decode, encode

    torch.set_num_threads(threads)
    pictures = [Image.open(p).convert("RGB") for p in images]
    kw = {"model": model} if model else {}
    files = [encode(im, quality=quality, **kw) for im in pictures]  # warm-up
    for f in files:
        decode(f, **kw)
    enc: list[float] = []
    dec: list[float] = []
    for _ in range(repeats):
        for im, f in zip(pictures, files):
            t0 = time.perf_counter()
            encode(im, quality=quality, **kw)
            enc.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            decode(f, **kw)
            dec.append(time.perf_counter() - t0)
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"setting": setting, "took": took, "encode_s": statistics.median(enc),
            "decode_s": statistics.median(dec), "sys_s": use.ru_stime,
            "peak_rss_mib": use.ru_maxrss / 1024, "bytes": sum(len(f) for f in files)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", nargs="+", type=Path,
                    default=[KODAK / f"kodim0{i}.png" for i in (1, 2, 3, 4)])
    ap.add_argument("--model", help="registry name or weights (default: the bundled default)")
    ap.add_argument("--quality", type=float, default=4.0)
    ap.add_argument("--settings", nargs="+", default=["system", "shipped", "retain96"],
                    choices=list(SETTINGS))
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per worker")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, [str(p) for p in a.images], a.model, a.quality,
                                a.repeats, a.threads)))
        return
    missing = [str(p) for p in a.images if not p.is_file()]
    if missing:
        sys.exit(f"images not found ({', '.join(missing)}); nothing measured")
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        sys.exit("these settings are glibc's; this is not a glibc system; nothing measured")

    runs: dict[str, list[dict]] = {s: [] for s in a.settings}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    for r in range(a.rounds):
        order = a.settings[r % len(a.settings):] + a.settings[:r % len(a.settings)]
        for s in order:
            cmd = [sys.executable, __file__, "--worker", s, "--images", *map(str, a.images),
                   "--quality", str(a.quality), "--repeats", str(a.repeats),
                   "--threads", str(a.threads)] + (["--model", a.model] if a.model else [])
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode:
                sys.exit(f"worker {s} failed: {out.stderr.strip().splitlines()[-1]}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            runs[s].append(row)
            print(f"round {r + 1}/{a.rounds} {s:>17}: encode {row['encode_s']:.3f} s, "
                  f"decode {row['decode_s']:.3f} s, sys {row['sys_s']:.1f} s, "
                  f"peak {row['peak_rss_mib']:.0f} MiB", flush=True)

    def med(s: str, key: str) -> float:
        return statistics.median(row[key] for row in runs[s])

    summary = {}
    for s in a.settings:
        summary[s] = {k: med(s, k) for k in ("encode_s", "decode_s", "sys_s", "peak_rss_mib")}
        summary[s]["took"] = all(row["took"] for row in runs[s])
        summary[s]["bytes"] = runs[s][0]["bytes"]
        for base in ("system", "shipped"):
            if base in runs and base != s:
                for k in ("encode_s", "decode_s"):
                    summary[s][f"{k[:6]}_speedup_vs_{base}"] = med(base, k) / med(s, k)
    print(f"\n{'setting':>17}  encode s  decode s  sys s  peak MiB  enc×/system  dec×/system")
    for s, v in summary.items():
        print(f"{s:>17}  {v['encode_s']:8.3f}  {v['decode_s']:8.3f}  {v['sys_s']:5.1f}  "
              f"{v['peak_rss_mib']:8.0f}  {v.get('encode_speedup_vs_system', 1.0):11.2f}  "
              f"{v.get('decode_speedup_vs_system', 1.0):11.2f}")
    if len({v["bytes"] for v in summary.values()}) > 1:
        sys.exit("the settings wrote files of different sizes: the allocator changed the output")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "images": [p.name for p in a.images], "model": a.model or "default",
            "quality": a.quality, "threads": a.threads, "rounds": a.rounds,
            "repeats": a.repeats, "load_avg": os.getloadavg(),
            "settings": {s: [list(c) for c in (SETTINGS[s] or ())] for s in a.settings},
            "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
