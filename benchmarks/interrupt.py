"""Ctrl-C at random moments of real ``varicodec encode`` processes: how each one ends.

A command interrupted with SIGINT must print one line, ``varicodec: interrupted``, exit
130 and leave no output or temporary file. Inside an import, a plain
``KeyboardInterrupt`` can cross torch's C++ code, which aborts the process, or land in an
importlib callback that swallows it (the command then runs on and exits 0). This sends
SIGINT to ``--runs`` encodes per handler at a delay drawn uniformly from ``--delays``
(the default spans the import of torch on a loaded 2-core machine), ``--parallel`` at a
time (the load of a test suite), the handlers taking turns:

* ``shipped``: the command as it is (``varicodec.cli._on_interrupt``),
* ``plain``: Python's default handler, ``KeyboardInterrupt`` everywhere (before session 22).

Each run ends as ``clean`` (130, the one line, nothing left behind), ``finished`` (exit 0,
no output on stderr: the signal came after the work), ``aborted`` (killed by a signal),
``swallowed`` (exit 0 with something on stderr) or ``other``.

    python benchmarks/interrupt.py --json docs/results/startup/interrupt.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

#: the child: the command line's ``main`` in a real process, with one handler or the other
CHILD = """
import signal, sys
import varicodec.cli as cli
if sys.argv[1] == "plain":
    cli._on_interrupt = signal.default_int_handler
sys.argv = ["varicodec", "encode", *sys.argv[2:]]
sys.exit(cli.main())
"""

HANDLERS = ("shipped", "plain")


def one_run(handler: str, image: Path, delay_s: float, work: Path) -> dict:
    """Encode ``image`` into a fresh folder, SIGINT after ``delay_s``; classify the end."""
    out_dir = Path(tempfile.mkdtemp(dir=work))
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, handler, str(image), "-o", str(out_dir / "a.vcd")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a benchmark started in the background inherits SIGINT ignored: restore it
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(delay_s)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)
    left = sorted(q.name for q in out_dir.iterdir())
    for q in out_dir.iterdir():
        q.unlink()
    out_dir.rmdir()
    rc = p.returncode
    if rc == 130 and err == "varicodec: interrupted\n" and not left:
        end = "clean"
    elif rc == 0 and not err:
        end = "finished"
    elif rc < 0:
        end = "aborted"
    elif rc == 0:
        end = "swallowed"
    else:
        end = "other"
    return {"handler": handler, "delay_s": round(delay_s, 3), "end": end, "rc": rc,
            "stderr_tail": err.strip().splitlines()[-1][:200] if err.strip() else "",
            "left_behind": left}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=400, help="encodes per handler (default 400)")
    ap.add_argument("--delays", type=float, nargs=2, default=(0.3, 2.5), metavar=("LO", "HI"),
                    help="SIGINT after a delay uniform in [LO, HI] seconds (default 0.3 2.5)")
    ap.add_argument("--parallel", type=int, default=4, help="encodes at a time (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the counts and every abnormal run here")
    args = ap.parse_args()

    from PIL import Image

    from varicodec.demo import synthetic_image

    rng = random.Random(args.seed)
    plan = [(h, rng.uniform(*args.delays)) for _ in range(args.runs) for h in HANDLERS]
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        image = work / "a.png"
        Image.fromarray(synthetic_image(512, 384)).save(image)
        runs, t0 = [], time.time()
        with ThreadPoolExecutor(args.parallel) as pool:
            for i, r in enumerate(pool.map(lambda hd: one_run(hd[0], image, hd[1], work), plan)):
                runs.append(r)
                if (i + 1) % 50 == 0:
                    print(f"{i + 1}/{len(plan)} runs, {time.time() - t0:.0f} s", file=sys.stderr)
    counts = {h: dict(collections.Counter(r["end"] for r in runs if r["handler"] == h))
              for h in HANDLERS}
    for h in HANDLERS:
        print(f"{h:8s} " + ", ".join(f"{k} {v}" for k, v in sorted(counts[h].items())))
    if args.json:
        report = {
            "command": "python benchmarks/interrupt.py " + " ".join(sys.argv[1:]),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                        "python": platform.python_version()},
            "runs_per_handler": args.runs, "delays_s": list(args.delays),
            "parallel": args.parallel, "seed": args.seed, "counts": counts,
            "abnormal": [r for r in runs if r["end"] not in ("clean", "finished")],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
