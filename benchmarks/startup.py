"""Start-up cost of the command line: import times and wall time per command.

Every figure is the median of ``--repeats`` fresh processes (each pays the
whole Python start-up, as a user does), with the 1-minute load average before
and after, since the machine may be shared. Three parts:

* **imports**: ``import varicodec``; torch alone; CompressAI the plain way
  (``import compressai``: its ``__init__`` pulls in the point-cloud stack and
  ``torch_geometric``) against the way varicodec imports it
  (:mod:`varicodec._compressai`: only ``compressai.models.google`` and what it
  needs), and varicodec's whole coding stack (``varicodec.codec.api``).
* **commands**: ``varicodec --version``, ``--help``, ``models``, ``info``,
  ``encode`` and ``decode`` of one image (Kodak ``kodim01`` by default), each
  as a fresh ``python -m varicodec`` process, wall time from spawn to exit.
* **first byte**: for ``encode`` and ``decode``, the time from spawn until the
  output file appears (outputs are moved into place whole, so this is the time
  to the first byte a reader can see).
* **CPU s**: user + system CPU time of each command (``wait4``); torch may use
  two threads, so it can exceed wall.
* **phases** (``--phases``): inside one fresh process, the seconds spent importing
  the coding stack, loading the bundled weights, a first encode without PSNR,
  an encode with it, and a decode; and, separately, how long a process that
  imported torch takes to exit normally against ``os._exit``.

    nice python benchmarks/startup.py                          # Kodak kodim01, 5 repeats
    python benchmarks/startup.py --image photo.png --repeats 9 --json startup.json
    PYTHONPATH=/tmp/old/src python benchmarks/startup.py       # another checkout's code
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "kodak" / "kodim01.png"

#: name → Python code run in a fresh interpreter
IMPORTS = {
    "import varicodec": "import varicodec",
    "import torch": "import torch",
    "import compressai (plain)": "import compressai.models",
    "compressai via varicodec._compressai": (
        "import varicodec._compressai as c; c.install(); "
        "from compressai.models import ScaleHyperprior"
    ),
    "import varicodec.codec.api (coding stack)": "import varicodec.codec.api",
}


def _load() -> float:
    return os.getloadavg()[0]


def _wall(cmd: list[str], watch: Path | None = None) -> tuple[float, float | None, float]:
    """Wall seconds from spawn to exit, seconds until ``watch`` exists, CPU seconds (user+sys)."""
    if watch is not None and watch.exists():
        watch.unlink()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = None
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if watch is not None and first is None and watch.exists():
            first = time.perf_counter() - t0
        time.sleep(0.002)
    wall = time.perf_counter() - t0
    if watch is not None and first is None and watch.exists():
        first = wall
    code = os.waitstatus_to_exitcode(status)
    p.returncode = code
    if code:
        err = p.stderr.read().decode().strip().splitlines() if p.stderr else []
        raise RuntimeError(f"{' '.join(cmd)} failed: {err[-1] if err else code}")
    return wall, first, usage.ru_utime + usage.ru_stime


PHASES = """
import json, sys, time
t0 = time.perf_counter()
import varicodec.codec.api as api
from varicodec.codec.pretrained import resolve_model
t1 = time.perf_counter()
m = resolve_model(None)
t2 = time.perf_counter()
r = api.encode_image(sys.argv[1], m, compute_psnr=False)
t3 = time.perf_counter()
r = api.encode_image(sys.argv[1], m)
t4 = time.perf_counter()
api.decode(r.data, m)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load weights": t2 - t1, "first encode (no PSNR)": t3 - t2,
                  "encode with PSNR": t4 - t3, "decode": t5 - t4}))
"""
EXIT = "import torch, os, sys; print(1, flush=True){}"


def _exit_time(fast: bool) -> float:
    """Seconds between a torch process's last output and its exit."""
    p = subprocess.Popen([sys.executable, "-c", EXIT.format("; os._exit(0)" if fast else "")],
                         stdout=subprocess.PIPE)
    assert p.stdout is not None
    p.stdout.readline()
    t = time.perf_counter()
    p.wait()
    return time.perf_counter() - t


def phases(image: Path, repeats: int) -> dict:
    runs = []
    for _ in range(repeats):
        r = subprocess.run([sys.executable, "-c", PHASES, str(image)], capture_output=True,
                           text=True, check=True)
        runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    out = {k: _median([r[k] for r in runs]) for k in runs[0]}
    out["exit after import torch"] = _median([_exit_time(False) for _ in range(repeats)])
    out["exit with os._exit"] = _median([_exit_time(True) for _ in range(repeats)])
    return out


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run(image: Path, repeats: int = 5) -> dict:
    py = sys.executable
    out: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count(), "repeats": repeats,
                 "image": str(image), "load_before": _load(), "imports_s": {},
                 "commands_s": {}, "first_byte_s": {}, "commands_cpu_s": {}}
    for name, code in IMPORTS.items():
        try:
            out["imports_s"][name] = _median([_wall([py, "-c", code])[0]
                                              for _ in range(repeats)])
        except RuntimeError:  # e.g. an older varicodec (PYTHONPATH) without the shim
            out["imports_s"][name] = None
    with tempfile.TemporaryDirectory() as tmp:
        vcd, png = Path(tmp) / "out.vcd", Path(tmp) / "out.png"
        cli = [py, "-m", "varicodec"]
        _wall(cli + ["encode", str(image), "-o", str(vcd), "-f"])  # a file for info/decode
        commands = {
            "--version": (cli + ["--version"], None),
            "--help": (cli + ["--help"], None),
            "models": (cli + ["models"], None),
            "info": (cli + ["info", str(vcd)], None),
            "encode": (cli + ["encode", str(image), "-o", str(Path(tmp) / "e.vcd"), "-f"],
                       Path(tmp) / "e.vcd"),
            "decode": (cli + ["decode", str(vcd), "-o", str(png), "-f"], png),
        }
        for name, (cmd, watch) in commands.items():
            walls, firsts, cpus = [], [], []
            for _ in range(repeats):
                wall, first, cpu = _wall(cmd, watch)
                walls.append(wall)
                cpus.append(cpu)
                if first is not None:
                    firsts.append(first)
            out["commands_s"][name] = _median(walls)
            out["commands_cpu_s"][name] = _median(cpus)
            if firsts:
                out["first_byte_s"][name] = _median(firsts)
    out["load_after"] = _load()
    return out


def _table(r: dict) -> str:
    lines = [f"python {r['python']}, {r['cpus']} CPUs, median of {r['repeats']} fresh processes, "
             f"load average {r['load_before']:.2f} before / {r['load_after']:.2f} after",
             "", "| import | seconds |", "|---|---|"]
    lines += [f"| `{k}` | {'n/a' if v is None else f'{v:.2f}'} |"
              for k, v in r["imports_s"].items()]
    lines += ["", f"| command ({Path(r['image']).name}) | wall s | first byte s | CPU s |",
              "|---|---|---|---|"]
    for k, v in r["commands_s"].items():
        fb = r["first_byte_s"].get(k)
        lines.append(f"| `varicodec {k}` | {v:.2f} | {'' if fb is None else f'{fb:.2f}'} | "
                     f"{r['commands_cpu_s'][k]:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--phases", action="store_true",
                    help="only the in-process phases of one encode/decode, and exit times")
    args = ap.parse_args(argv)
    if not args.image.is_file():
        print(f"startup.py: no image at {args.image} (use --image)", file=sys.stderr)
        return 2
    if args.phases:
        load = _load()
        r = {"load_before": load, "phases_s": phases(args.image, args.repeats),
             "load_after": _load()}
        print(f"median of {args.repeats}, load average {load:.2f} before / "
              f"{r['load_after']:.2f} after\n\n| phase | seconds |\n|---|---|")
        print("\n".join(f"| {k} | {v:.2f} |" for k, v in r["phases_s"].items()))
    else:
        r = run(args.image, args.repeats)
        print(_table(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
