"""``varicodec serve`` under use: time to the four panels, and the server's memory.

Starts the real command (``python -m varicodec serve --port 0``) as a separate
process and talks to it over HTTP on 127.0.0.1 only, as the page does: a
multipart upload of a Kodak PNG, then polls of ``/api/jobs/{id}`` every 50 ms.

* **latency**: for each of four Kodak images, wall time from the start of the
  upload to the moment the job reports its four panels (state ``panels`` or
  ``done``), and to ``done`` (with the gating report: per-layer sparsity and
  FLOPs counted). Baseline in the same run: :func:`varicodec.serve.compare.compare`
  called directly in this process on the same pixels and target (same work: our
  encode/decode, three size searches, metrics; no HTTP, PNGs, job queue); the
  ratio served / direct is the server's overhead; so is, within one served run,
  upload→panels minus the compare time the server measured itself (upload,
  decoding the PNG, the PNGs of the five images, polling). ``--rounds`` served and direct
  runs alternate per image (both see the same machine load); medians.
* **memory**: the server's resident set size (``VmRSS`` of its process) after
  each of ``--uploads`` uploads, cycling through the Kodak images one at a
  time; the job store keeps the last 8 comparisons, so RSS should level off once
  it is full. Exit status 1 if RSS grows by more than ``--bound-mib`` between
  upload ``--settle`` and the last one.

Kodak is read at run time from ``../shared/data/kodak`` (exit status 2 if missing).

    python benchmarks/serve.py                      # 4 latency images × 3 rounds, 100 uploads
    python benchmarks/serve.py --uploads 0 --rounds 5 --json serve.json   # latency only
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
LATENCY_IMAGES = ("kodim01.png", "kodim05.png", "kodim15.png", "kodim23.png")


def multipart(fields: dict[str, str], file_name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{file_name}"\r\nContent-Type: image/png\r\n\r\n'.encode() + data
                 + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class Served:
    """The ``varicodec serve`` process."""

    def __init__(self, model: str | None) -> None:
        cmd = [sys.executable, "-m", "varicodec", "serve", "--port", "0"]
        if model:
            cmd += ["--model", model]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=ROOT)
        line = self.proc.stdout.readline()
        if not line.startswith("varicodec serve: http://"):
            raise SystemExit(f"the server did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split()[2].rstrip("/")

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def upload(self, path: Path, target: str, value: str) -> tuple[str, float]:
        body, ctype = multipart({"target": target, "value": value}, path.name, path.read_bytes())
        req = urllib.request.Request(f"{self.url}/api/compare", data=body, method="POST",
                                     headers={"Content-Type": ctype})
        t0 = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["job"], t0

    def wait(self, job: str, t0: float) -> dict:
        panels_s = None
        while True:
            with urllib.request.urlopen(f"{self.url}/api/jobs/{job}", timeout=60) as r:
                s = json.loads(r.read())
            now = time.perf_counter() - t0
            if s["state"] == "error":
                raise SystemExit(f"job failed: {s['error']}")
            if panels_s is None and s["state"] in ("panels", "done"):
                panels_s = now
            if s["state"] == "done":
                return {"panels_s": panels_s, "done_s": now,
                        "server_compare_s": s["result"]["seconds"]}
            time.sleep(0.05)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def direct(path: Path, model: str | None, target: str, value: str) -> float:
    """The baseline: the same comparison in this process, no server."""
    from varicodec.codec import resolve_model
    from varicodec.imageio import load_rgb
    from varicodec.serve.compare import Target, compare

    m = resolve_model(model)
    rgb = load_rgb(path)
    t0 = time.perf_counter()
    compare(rgb, m, Target.parse(target, value), gating=False)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kodak", type=Path, default=KODAK)
    ap.add_argument("--model", help="model name or weights (default: bundled)")
    ap.add_argument("--target", default="quality", choices=("quality", "bpp", "jpeg"))
    ap.add_argument("--value", default="4")
    ap.add_argument("--rounds", type=int, default=3,
                    help="served and direct runs per latency image, alternated (default 3)")
    ap.add_argument("--uploads", type=int, default=100, help="memory part (0: skip it)")
    ap.add_argument("--settle", type=int, default=20,
                    help="upload after which RSS growth is measured (default 20)")
    ap.add_argument("--bound-mib", type=float, default=64.0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on the way out
    images = sorted(args.kodak.glob("kodim*.png"))
    if not images:
        print(f"serve benchmark: no Kodak images in {args.kodak}", file=sys.stderr)
        return 2
    load0 = os.getloadavg()[0]
    out: dict = {"model": args.model or "bundled", "target": [args.target, args.value],
                 "cpu_count": os.cpu_count(), "load_before": load0}

    # one direct warm-up so the baseline's first call does not pay lazy initialisation
    direct(args.kodak / LATENCY_IMAGES[0], args.model, args.target, args.value)
    server = Served(args.model)
    try:
        out["rss_start_mib"] = server.rss_mib()
        job, t0 = server.upload(args.kodak / LATENCY_IMAGES[0], args.target, args.value)
        server.wait(job, t0)  # the server's warm-up (first torch calls)
        rows = []
        for name in LATENCY_IMAGES:
            path = args.kodak / name
            served_runs, direct_runs = [], []
            for _ in range(args.rounds):  # alternated, so both see the same load
                job, t0 = server.upload(path, args.target, args.value)
                served_runs.append(server.wait(job, t0))
                direct_runs.append(direct(path, args.model, args.target, args.value))
            served = {k: statistics.median(r[k] for r in served_runs) for k in served_runs[0]}
            base = statistics.median(direct_runs)
            overhead = statistics.median(r["panels_s"] - r["server_compare_s"]
                                         for r in served_runs)
            rows.append({"image": name, **served, "direct_compare_s": base,
                         "ratio": served["panels_s"] / base, "overhead_s": overhead,
                         "rounds": args.rounds})
            print(f"{name}: upload→panels {served['panels_s']:.2f} s, →done "
                  f"{served['done_s']:.2f} s, direct compare {base:.2f} s, "
                  f"ratio {served['panels_s'] / base:.2f}; beyond the server's own compare "
                  f"{overhead:.2f} s (medians of {args.rounds})", flush=True)
        out["latency"] = rows
        out["latency_median"] = {k: statistics.median(r[k] for r in rows)
                                 for k in ("panels_s", "done_s", "direct_compare_s", "ratio",
                                           "overhead_s")}

        if args.uploads < 1:
            return _report(args, out, load0)
        rss = []
        t_mem = time.perf_counter()
        for i in range(args.uploads):
            path = images[i % len(images)]
            job, t0 = server.upload(path, args.target, args.value)
            server.wait(job, t0)
            rss.append(server.rss_mib())
            if (i + 1) % 10 == 0:
                print(f"upload {i + 1}: RSS {rss[-1]:.0f} MiB", flush=True)
        out["memory"] = {
            "uploads": args.uploads, "rss_mib": rss, "settle": args.settle,
            "rss_after_settle_mib": rss[min(args.settle, len(rss)) - 1],
            "rss_last_mib": rss[-1], "rss_max_mib": max(rss),
            "growth_after_settle_mib": rss[-1] - rss[min(args.settle, len(rss)) - 1],
            "bound_mib": args.bound_mib, "seconds": time.perf_counter() - t_mem,
        }
    finally:
        server.close()
    return _report(args, out, load0)


def _report(args: argparse.Namespace, out: dict, load0: float) -> int:
    out["load_after"] = os.getloadavg()[0]
    med = out["latency_median"]
    print(f"median upload→four panels {med['panels_s']:.2f} s (direct compare "
          f"{med['direct_compare_s']:.2f} s, ratio {med['ratio']:.2f}); load {load0:.1f}→"
          f"{out['load_after']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    if "memory" not in out:
        return 0
    m = out["memory"]
    ok = m["growth_after_settle_mib"] <= args.bound_mib
    print(f"RSS start {out['rss_start_mib']:.0f} MiB, after {args.settle} uploads "
          f"{m['rss_after_settle_mib']:.0f}, after {args.uploads} {m['rss_last_mib']:.0f}, "
          f"max {m['rss_max_mib']:.0f} MiB; growth {m['growth_after_settle_mib']:+.1f} MiB "
          f"(bound {args.bound_mib:g}: {'ok' if ok else 'EXCEEDED'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
