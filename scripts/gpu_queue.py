#!/usr/bin/env python3
"""The GPU training queue: every GPU window continues the training lines where the last stopped.

A GPU machine is lent now and then for ~15 minutes (start-up included), receives only this
checkout (≤ 64 MB with carried folders), has torch but not CompressAI, and no network. The
plan, ``configs/gpu/queue.yaml``, lists jobs in order; each trains one *line* (a model
whose current weights live in ``checkpoints/gpu/<line>.safetensors``) for a time budget,
or runs a measurement command.

Here (CPU machine), before a window::

    python scripts/gpu_queue.py pack        # .gpu/: train/val data as compact JPEG, wheels
    python scripts/gpu_queue.py next        # what the next window will run

On the GPU machine (one device call; carry .gpu)::

    python3 scripts/gpu_queue.py run --deadline 540 --out "$OUT"

Back here, with the files the call returned::

    python scripts/gpu_queue.py collect /work/.device/…     # weights into checkpoints/gpu/,
                                                            # logs into docs/results/gpu-runs/,
                                                            # the plan updated
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "configs/gpu/queue.yaml"
PACK = ROOT / ".gpu"
LINES = ROOT / "checkpoints/gpu"
RUNS_DOC = ROOT / "docs/results/gpu-runs"
SHARED = ROOT.parent / "shared"
WHEELS = ["compressai==1.2.8", "pytorch-msssim==1.0.0"]
#: seconds a job needs beyond its training minutes (start-up, validation, export)
OVERHEAD_S = 45


def load_plan() -> dict:
    if not PLAN.is_file():
        sys.exit(f"gpu_queue: no plan at {PLAN}")
    plan = yaml.safe_load(PLAN.read_text())
    if not isinstance(plan, dict) or not isinstance(plan.get("jobs"), list):
        sys.exit(f"{PLAN}: expected a mapping with a 'jobs' list")
    return plan


def save_plan(plan: dict) -> None:
    header = "".join(line for line in PLAN.read_text().splitlines(keepends=True)
                     if line.startswith("#"))
    body = yaml.safe_dump(plan, sort_keys=False, allow_unicode=True, width=100)
    tmp = PLAN.with_suffix(".tmp")
    tmp.write_text(header + body)
    tmp.replace(PLAN)


def pending(plan: dict) -> list[dict]:
    return [j for j in plan["jobs"] if j.get("status", "pending") == "pending"]


# ---------------------------------------------------------------------- pack (here)
#: the lean pack (``pack --lean``, ~31 MB of training data instead of ~50): for windows
#: that carry an N=192/M=320 line (24 MB of fp16 weights), which the full pack leaves no
#: room for under the 64 MiB limit
LEAN = {"bsds500": (0.85, 92, 2), "wikiphoto": (0.6, 94, 0)}   # scale, JPEG quality, subsampling
FULL = {"bsds500": None, "wikiphoto": (0.7, 94, 0)}             # None: the file as it is


def _jpeg(src: Path, out: Path, scale: float, quality: int, subsampling: int) -> None:
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        im = im.resize((round(im.width * scale), round(im.height * scale)),
                       Image.Resampling.LANCZOS)
        im.save(out, quality=quality, subsampling=subsampling)


def cmd_pack(a: argparse.Namespace) -> int:
    """Training data as compact JPEG plus the wheels the GPU image lacks, into .gpu/."""
    from PIL import Image

    src = Path(a.data)
    if not (src / "train").is_dir():
        sys.exit(f"gpu_queue pack: no training data at {src}/train")
    train, val, whl = PACK / "data/train", PACK / "data/val", PACK / "whl"
    recipe = LEAN if a.lean else FULL
    marker = PACK / "data" / "pack.json"
    if train.is_dir() and (json.loads(marker.read_text()) if marker.is_file()
                           else {"lean": False}) != {"lean": bool(a.lean)}:
        shutil.rmtree(train)        # the other pack: rebuild the training set
    for d in (train, val, whl):
        d.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"lean": bool(a.lean)}))
    n = 0
    for p in sorted((src / "train").iterdir()):
        kind = p.name.split("_")[0]
        if kind not in recipe:
            continue                # sunhays80_*: JPEG q≈75, artefacts the codec would learn
        n += 1
        if recipe[kind] is None:                   # bsds500, full pack: JPEG q≈95, as is
            if not (train / p.name).exists():
                shutil.copyfile(p, train / p.name)
            continue
        out = train / (p.stem + ".jpg")            # rescaled (LANCZOS) and re-encoded
        if not out.exists():
            _jpeg(p, out, *recipe[kind])
    v = 0
    for p in sorted((src / "val").iterdir())[: a.val_images]:
        out = val / (p.stem + ".png")
        if not out.exists():
            with Image.open(p) as im:   # the centre crop the loop's validation takes
                w, h = im.size
                c = min(a.val_crop, h - h % 64, w - w % 64)
                top, left = (h - c) // 2, (w - c) // 2
                im.convert("RGB").crop((left, top, left + c, top + c)).save(out)
        v += 1
    if not any(whl.glob("compressai-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", "--platform", "manylinux_2_34_x86_64",
                        "--platform", "manylinux_2_17_x86_64", "--platform", "any",
                        "-d", str(whl), *WHEELS], check=True)
    size = sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file()) / 1e6
    print(f"packed {n} training and {v} validation images and {len(list(whl.glob('*.whl')))} "
          f"wheels into {PACK} ({size:.1f} MB{', lean' if a.lean else ''})")
    return 0


# ---------------------------------------------------------------------- slim (here)
LIMIT_BYTES = 64 * 2**20
SLIM_BEGIN, SLIM_END = "# gpu_queue slim: begin", "# gpu_queue slim: end"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def _git_files(*args: str) -> list[Path]:
    return [ROOT / n for n in _git("ls-files", "-z", *args).split("\0") if n]


def _exclude_without_slim(text: str) -> str:
    if SLIM_BEGIN not in text:
        return text
    before, _, rest = text.partition(SLIM_BEGIN)
    return before + rest.partition(SLIM_END + "\n")[2]


def cmd_slim(a: argparse.Namespace) -> int:
    """Take large files the pending jobs do not need out of what travels (undo: unslim).

    The device call sends tracked and untracked-not-ignored files; large weights that
    no job this window reaches (:func:`window_jobs` at ``--deadline``) starts from are
    removed from the index (not from disk) and listed in ``.git/info/exclude`` between
    two marker lines. A job whose weights did not travel stays pending.
    """
    needed = {_init_of(j).resolve() for j in window_jobs(pending(load_plan()), a.deadline)
              if j.get("line") and _init_of(j) is not None}
    tracked = _git_files()
    candidates = tracked + _git_files("--others", "--exclude-standard")
    folders = tuple(f"{d.strip('/')}/" for d in a.drop_dirs)
    drop = sorted({str(f.relative_to(ROOT)) for f in candidates
                   if f.is_file() and f.resolve() not in needed
                   and (f.stat().st_size > a.min_mb * 1e6
                        or str(f.relative_to(ROOT)).startswith(folders))})
    tracked_names = {str(f.relative_to(ROOT)) for f in tracked}
    if drop:
        if any(d in tracked_names for d in drop):
            _git("rm", "-q", "--cached", "--", *[d for d in drop if d in tracked_names])
        exclude = ROOT / ".git/info/exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        text = _exclude_without_slim(exclude.read_text() if exclude.exists() else "")
        exclude.write_text(text + "\n".join([SLIM_BEGIN, *(f"/{d}" for d in drop), SLIM_END])
                           + "\n")
    travelling = _git_files() + _git_files("--others", "--exclude-standard")
    size = sum(f.stat().st_size for f in travelling if f.is_file())
    size += sum(f.stat().st_size for f in PACK.rglob("*") if f.is_file())
    print(f"left out {len(drop)} large files; {size / 2**20:.1f} MiB would travel with .gpu "
          f"(limit {LIMIT_BYTES / 2**20:.0f} MiB). After the call: "
          "python scripts/gpu_queue.py unslim")
    if size >= LIMIT_BYTES:
        print("too large: python scripts/gpu_queue.py pack --lean makes the training data "
              "~20 MB smaller (for windows that carry an N=192/M=320 line)")
    return 0 if size < LIMIT_BYTES else 1


def cmd_unslim(a: argparse.Namespace) -> int:
    """Undo ``slim``: the index back to HEAD's files, the marked exclusions removed."""
    exclude = ROOT / ".git/info/exclude"
    text = exclude.read_text() if exclude.exists() else ""
    block = text.partition(SLIM_BEGIN)[2].partition(SLIM_END)[0]
    paths = [line[1:] for line in block.splitlines() if line.startswith("/")]
    if exclude.exists():
        exclude.write_text(_exclude_without_slim(text))
    if paths:  # only the paths slim took out: other staged changes stay staged
        _git("reset", "-q", "--", *paths)
    print("index and exclusions restored")
    return 0


# ---------------------------------------------------------------------- next (here)
def cmd_next(a: argparse.Namespace) -> int:
    plan = load_plan()
    jobs = pending(plan)
    if not jobs:
        print("the queue is empty: add jobs to configs/gpu/queue.yaml")
        return 0
    print("next GPU window runs, in order, as long as its deadline allows:")
    for j in jobs:
        if j.get("command"):
            what = j["command"]
        else:
            src = _init_of(j)
            start = ("scratch" if src is None else
                     src.relative_to(ROOT) if src.is_file() and src.is_relative_to(ROOT)
                     else src if src.is_file() else f"{src} (MISSING)")
            what = f"train {j['line']} from {start}"
            if _widens(j):
                what += " widened to the recipe's N/M"
            elif _starts_line_from(j, "parts_from"):
                what += f" (only {', '.join(j.get('parts', []))})"
        print(f"  {j['id']}: {what} ({j.get('minutes', '?')} min)")
    return 0


# ---------------------------------------------------------------------- run (GPU)
def _weights_of(ref: str) -> Path:
    """``line:NAME`` → that line's current weights; otherwise a path in the checkout."""
    if ref.startswith("line:"):
        return LINES / f"{ref[5:]}.safetensors"
    return ROOT / ref


def _init_of(job: dict) -> Path | None:
    """The weights a train job starts from (default: its own line), or ``None`` for
    scratch: ``init: null``, or a new line marked ``from_scratch_if_new``. A new line
    with ``widen_from: REF`` starts from those weights widened to its recipe's N/M
    (``varicodec widen``, on the GPU machine), one with ``parts_from: REF`` from the
    modules ``parts`` of those weights (``init_parts``: e.g. a hyperprior's transforms for a
    mean-scale or joint line): that file is what it needs. A path that does not exist
    otherwise is returned as is (the runner then leaves the job pending)."""
    ref = job.get("init", f"line:{job['line']}")
    if not ref:
        return None
    path = _weights_of(ref)
    if not path.is_file() and ref == f"line:{job['line']}":
        for key in ("widen_from", "parts_from"):
            if job.get(key):
                return _weights_of(job[key])
        if job.get("from_scratch_if_new"):
            return None
    return path


def _starts_line_from(job: dict, key: str) -> bool:
    """Whether the job starts its (new) line by ``key`` (``widen_from``, ``parts_from``)."""
    return bool(job.get(key)) and "init" not in job and not (
        LINES / f"{job['line']}.safetensors").is_file()


def _widens(job: dict) -> bool:
    """Whether the job starts its (new) line from widened weights."""
    return _starts_line_from(job, "widen_from")


def window_jobs(jobs: list[dict], deadline: float) -> list[dict]:
    """The pending jobs a window of ``deadline`` seconds reaches, by the runner's own rule
    (a job starts if ``min_minutes`` + overhead still fit; a train job gets its minutes or
    what is left), assuming each job uses all the time it is given."""
    t, chosen = 0.0, []
    for job in jobs:
        left = deadline - t
        overhead = job.get("overhead_s", OVERHEAD_S)
        if left < float(job.get("min_minutes", job.get("minutes", 1))) * 60 + overhead:
            continue
        chosen.append(job)
        t += min(float(job.get("minutes", 1)) * 60, left - overhead) + overhead
    return chosen


def _env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    site = os.environ.get("VARICODEC_SITE", "/tmp/site")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, str(ROOT / "src"),
                                                    env.get("PYTHONPATH")) if p)
    return env


def _install_wheels() -> None:
    import importlib.util

    if importlib.util.find_spec("compressai") is not None:
        return  # already there (a machine with the project's environment)
    wheels = sorted(str(p) for p in (PACK / "whl").glob("*.whl"))
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target",
                        os.environ.get("VARICODEC_SITE", "/tmp/site"), *wheels], check=True)


def _train_job(job: dict, minutes: float, out: Path, logs: Path, runs: Path) -> dict:
    line = job["line"]
    run_name = f"{job['id']}"
    init = _init_of(job)
    if _widens(job):   # a new line grown from another's weights: widen them here first
        recipe = yaml.safe_load((ROOT / job["config"]).read_text())
        wide = runs / f"{job['id']}-widened.safetensors"
        subprocess.run([sys.executable, "-m", "varicodec", "widen", str(init), "--N",
                        str(recipe["N"]), "--M", str(recipe["M"]), "--out", str(wide)],
                       env=_env(), check=True)
        init = wide
    cmd = [sys.executable, "-m", "varicodec", "train", "--config", str(ROOT / job["config"]),
           "--name", run_name, "--out-dir", str(runs),
           *(["--init", str(init)] if init else []),
           *([f"--set=init_parts={json.dumps(job['parts'])}"]
             if _starts_line_from(job, "parts_from") else []),
           # `steps`: a step-matched run (e.g. the dense partner of a gated fork); its lr
           # decays follow the steps, `minutes` only bounds it
           *([f"--set=steps={int(job['steps'])}"] if job.get("steps") else []),
           "--time-budget", f"{minutes:.3f}"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.time()
    with open(logs / f"{job['id']}.stderr.txt", "w") as f:
        rc = subprocess.run(cmd, env=_env(), stderr=subprocess.STDOUT, stdout=f).returncode
    fallback = job.get("fallback", ["amp=null", "channels_last=false", "compile=false"])
    if rc != 0 and fallback and time.time() - t0 < 0.5 * 60 * minutes:
        # the fast path failed early on this machine: the rest of the budget, the safe path
        print((logs / f"{job['id']}.stderr.txt").read_text()[-3000:], flush=True)
        left = minutes - (time.time() - t0) / 60
        cmd = cmd[:-1] + [f"{left:.3f}"] + [f"--set={s}" for s in fallback]
        shutil.rmtree(runs / run_name, ignore_errors=True)
        print("fallback $", " ".join(cmd), flush=True)
        with open(logs / f"{job['id']}.fallback.stderr.txt", "w") as f:
            rc = subprocess.run(cmd, env=_env(), stderr=subprocess.STDOUT, stdout=f).returncode
    result = {"id": job["id"], "line": line, "rc": rc, "wall_s": round(time.time() - t0, 1),
              "train_minutes": minutes}
    if rc != 0:
        print((logs / f"{job['id']}.stderr.txt").read_text()[-3000:], flush=True)
        return result
    weights = out / f"{line}.safetensors"
    subprocess.run([sys.executable, "-m", "varicodec", "export", str(runs / run_name),
                    "--out", str(weights)], env=_env(), check=True)
    LINES.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, LINES / f"{line}.safetensors")  # later jobs continue from here
    shutil.move(str(weights) + ".json", logs / f"{line}.safetensors.json")
    shutil.copyfile(runs / run_name / "log.csv", logs / f"{job['id']}.log.csv")
    card = json.loads((logs / f"{line}.safetensors.json").read_text())
    result.update(steps=card["steps"], total_steps=card["total_steps"],
                  validation=card["validation"])
    return result


def cmd_run(a: argparse.Namespace) -> int:
    """Run pending jobs in order until the deadline; results and logs into --out."""
    t_start = time.time()
    out = Path(a.out)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    _install_wheels()
    runs = Path(tempfile.mkdtemp(prefix="varicodec-runs-"))
    plan = load_plan()
    report = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "deadline_s": a.deadline, "jobs": []}
    try:
        import torch
        report["device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                            else "cpu")
        report["torch"] = torch.__version__
    except ImportError:
        pass
    for job in pending(plan):
        left = a.deadline - (time.time() - t_start)
        overhead = job.get("overhead_s", OVERHEAD_S)
        need = float(job.get("min_minutes", job.get("minutes", 1))) * 60 + overhead
        if left < need:
            print(f"skip {job['id']}: {left:.0f} s left, needs {need:.0f} s", flush=True)
            report["jobs"].append({"id": job["id"], "skipped": f"{left:.0f} s left"})
            continue
        init = _init_of(job) if job.get("line") else None
        if init is not None and not init.is_file():   # not carried this window: later
            print(f"skip {job['id']}: its start weights {init} did not travel", flush=True)
            report["jobs"].append({"id": job["id"], "skipped": f"no weights at {init}"})
            continue
        if job.get("command"):
            t0 = time.time()
            cmd = job["command"].replace("$LOGS", str(logs))
            print("$", cmd, flush=True)
            timeout = max(10.0, left - 15)
            proc = subprocess.Popen(cmd, shell=True, env=_env(), cwd=ROOT,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:   # the whole group, not just the shell
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = "timeout"
            report["jobs"].append({"id": job["id"], "rc": rc,
                                   "wall_s": round(time.time() - t0, 1)})
        else:
            minutes = min(float(job["minutes"]), (left - overhead) / 60)
            report["jobs"].append(_train_job(job, minutes, out, logs, runs))
        (logs / "report.json").write_text(json.dumps(report, indent=1))
    report["wall_s"] = round(time.time() - t_start, 1)
    (logs / "report.json").write_text(json.dumps(report, indent=1))
    with tarfile.open(out / "logs.tar.gz", "w:gz") as tar:
        tar.add(logs, arcname="logs")
    shutil.rmtree(logs)
    print(json.dumps(report, indent=1))
    return 0


# ---------------------------------------------------------------------- collect (here)
def cmd_collect(a: argparse.Namespace) -> int:
    """Take a window's output: weights into checkpoints/gpu/, logs into docs, plan updated."""
    src = Path(a.dir)
    if not (src / "logs.tar.gz").is_file():
        sys.exit(f"gpu_queue collect: no logs.tar.gz in {src}")
    unpack = Path(tempfile.mkdtemp(prefix="gpu-collect-"))
    with tarfile.open(src / "logs.tar.gz") as tar:
        tar.extractall(unpack, filter="data")
    logs = unpack / "logs"
    report = json.loads((logs / "report.json").read_text())
    stamp = report["started"][:16].replace(":", "").replace("T", "-")
    dest = RUNS_DOC / stamp
    dest.mkdir(parents=True, exist_ok=True)
    for f in logs.iterdir():
        shutil.copyfile(f, dest / f.name)
    plan = load_plan()
    by_id = {j["id"]: j for j in plan["jobs"]}
    LINES.mkdir(parents=True, exist_ok=True)
    for r in report["jobs"]:
        job = by_id.get(r["id"])
        if job is None or "skipped" in r:
            continue
        ok = r.get("rc") == 0
        if ok and job.get("line"):
            shutil.copyfile(src / f"{job['line']}.safetensors",
                            LINES / f"{job['line']}.safetensors")
            shutil.copyfile(logs / f"{job['line']}.safetensors.json",
                            LINES / f"{job['line']}.safetensors.json")
        job["status"] = "done" if ok else "failed"
        job["result"] = {k: v for k, v in r.items() if k in (
            "rc", "wall_s", "train_minutes", "steps", "total_steps")}
        job["result"]["window"] = stamp
        job["result"]["device"] = report.get("device")
    save_plan(plan)
    for f in ("run.log",):
        if (src / f).is_file():
            shutil.copyfile(src / f, dest / f)
    shutil.rmtree(unpack)
    print(f"collected {len(report['jobs'])} jobs of window {stamp} into {dest} and {LINES}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--plan", help="plan file (default configs/gpu/queue.yaml)")
    ap.add_argument("--lines", help="folder of the lines' weights (default checkpoints/gpu)")
    ap.add_argument("--runs-doc", help="where collect puts logs (default docs/results/gpu-runs)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="build .gpu/ (data, wheels) for the GPU machine")
    p.add_argument("--data", default=str(SHARED / "data"))
    p.add_argument("--val-images", type=int, default=8)
    p.add_argument("--val-crop", type=int, default=256)
    p.add_argument("--lean", action="store_true",
                   help="~31 MB of training data (bsds500 0.85x JPEG q92, wikiphoto 0.6x) so "
                        "that an N=192/M=320 line's weights fit beside it")
    p.set_defaults(func=cmd_pack)
    sub.add_parser("next", help="show the pending jobs").set_defaults(func=cmd_next)
    sl = sub.add_parser("slim", help="leave out of the device call the large files the "
                                     "pending jobs do not need (undo: unslim)")
    sl.add_argument("--min-mb", type=float, default=1.0, help="files above this size")
    sl.add_argument("--deadline", type=float, default=540,
                    help="the run's --deadline: only the jobs it reaches keep their weights")
    sl.add_argument("--drop-dirs", nargs="*", default=["docs"],
                    help="folders left out whole (default: docs)")
    sl.set_defaults(func=cmd_slim)
    sub.add_parser("unslim", help="undo slim").set_defaults(func=cmd_unslim)
    r = sub.add_parser("run", help="on the GPU machine: run pending jobs until the deadline")
    r.add_argument("--deadline", type=float, default=540, help="seconds for the whole run")
    r.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("collect", help="take a window's output into the repo")
    c.add_argument("dir", help="the folder the device call's files landed in")
    c.set_defaults(func=cmd_collect)
    a = ap.parse_args()
    global PLAN, LINES, RUNS_DOC
    if a.plan:
        PLAN = Path(a.plan).resolve()
    if a.lines:
        LINES = Path(a.lines).resolve()
    if a.runs_doc:
        RUNS_DOC = Path(a.runs_doc).resolve()
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
