"""Decode anywhere, GPU part (issue 14): files written on the CPU decode on a GPU and
files written on a GPU decode on the CPU, to the same symbols and (within float noise) the
same pixels. Three steps, because the GPU machine is lent for minutes and sees only the
checkout plus ``.gpu/``:

1. here, before a window: ``python benchmarks/gpu_portability.py prepare`` encodes four of
   the validation crops that travel in ``.gpu/data/val`` with each model below at qualities
   1 and 8 into ``.gpu/portability/cpu/`` (a few hundred kB) and records each file's
   CPU decode (its SHA-256);
2. on the GPU machine (a job of ``configs/gpu/queue.yaml``):
   ``python benchmarks/gpu_portability.py device --out OUT`` decodes those files on the
   GPU, encodes the same crops on the GPU and decodes its own files; every decode and the
   GPU files go to ``OUT``;
3. back here: ``python benchmarks/gpu_portability.py collect OUT`` decodes the GPU's files
   on the CPU, compares every pair of decodes pixel by pixel and writes
   ``docs/results/portability/gpu.json``.

Models: the line ``hyperprior-ecgbm-128`` (a trained hyperprior; the window carries its
weights) and two tiny gated, variable-rate models of the other architectures (``joint``:
the golden files' model; ``mean``: made by ``prepare`` and carried), which exercise the
mean and context-model paths of the guard. A desync is either the decoder's symbol check
(an error naming the file) or, for version 1 files only, garbage; neither may happen.
Without CUDA, ``device`` runs on the CPU (a dry run of the whole procedure).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))   # tiny_models: the mean model of step 1
WORK = ROOT / ".gpu" / "portability"
VAL = ROOT / ".gpu" / "data" / "val"
QUALITIES = (1, 8)
N_IMAGES = 4   # of the 8 crops: the files must fit beside .gpu's 52 MB in the 64 MiB carry
MODELS = {
    "hyperprior-ecgbm-128": ROOT / "checkpoints" / "gpu" / "hyperprior-ecgbm-128.safetensors",
    "joint-ecgbm-tiny": ROOT / "tests" / "golden" / "joint-ecgbm-tiny.safetensors",
    "mean-ecgbm-tiny": WORK / "mean-ecgbm-tiny.safetensors",
}


def _images() -> list[Path]:
    images = sorted(VAL.glob("*.png"))[:N_IMAGES]
    if not images:
        sys.exit(f"gpu_portability: no validation crops in {VAL} "
                 "(python scripts/gpu_queue.py pack makes them)")
    return images


def _decode(data: bytes, model) -> tuple[np.ndarray | None, str]:
    from varicodec.codec.api import decode
    from varicodec.errors import VaricodecError

    try:
        return np.asarray(decode(data, model)), "ok"
    except (VaricodecError, ValueError, RuntimeError) as e:
        return None, f"{type(e).__name__}: {e}"


def _sha(a: np.ndarray | None) -> str | None:
    return None if a is None else hashlib.sha256(a.tobytes()).hexdigest()


def _models(device: str) -> dict:
    from varicodec.models import load_model

    missing = [str(p) for p in MODELS.values() if not p.is_file()]
    if missing:
        sys.exit(f"gpu_portability: missing weights {missing} (run prepare first)")
    return {k: load_model(p, device=device) for k, p in MODELS.items()}


def _files(images: list[Path]) -> list[tuple[str, str, Path, int]]:
    """(file stem, model key, image, quality) of every file, in a fixed order."""
    return [(f"{m}.{p.stem}.q{q}", m, p, q) for m in MODELS for p in images for q in QUALITIES]


def cmd_prepare(a: argparse.Namespace) -> int:
    from tiny_models import tiny_model

    from varicodec.codec.api import encode_image
    from varicodec.imageio import load_rgb
    from varicodec.models import save_model

    images = _images()
    (WORK / "cpu").mkdir(parents=True, exist_ok=True)
    save_model(tiny_model("mean-ecgbm", seed=3), MODELS["mean-ecgbm-tiny"], half=False)
    models = _models("cpu")
    manifest = {"torch": torch.__version__, "files": {}}
    for stem, m, p, q in _files(images):
        data = encode_image(load_rgb(p), models[m], quality=q, compute_psnr=False).data
        (WORK / "cpu" / f"{stem}.vcd").write_bytes(data)
        rgb, status = _decode(data, models[m])
        manifest["files"][stem] = {"bytes": len(data), "cpu_decode_sha256": _sha(rgb),
                                   "status": status}
    (WORK / "manifest.json").write_text(json.dumps(manifest, indent=1))
    size = sum(f.stat().st_size for f in WORK.rglob("*") if f.is_file())
    print(f"prepared {len(manifest['files'])} CPU files in {WORK} ({size / 1e3:.0f} kB)")
    return 0


def cmd_device(a: argparse.Namespace) -> int:
    from varicodec.codec.api import encode_image
    from varicodec.imageio import load_rgb

    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(a.out)
    (out / "gpu").mkdir(parents=True, exist_ok=True)
    images = _images()
    models = _models(device)
    report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
              "torch": torch.__version__, "files": {}}
    decodes = {}
    for stem, m, p, q in _files(images):
        row = {}
        cpu_file = WORK / "cpu" / f"{stem}.vcd"
        rgb, row["cpu_file_status"] = _decode(cpu_file.read_bytes(), models[m])
        if rgb is not None:
            decodes[f"cpu_file.{stem}"] = rgb
        try:
            data = encode_image(load_rgb(p), models[m], quality=q, compute_psnr=False).data
        except (RuntimeError, ValueError) as e:
            row["encode_status"] = f"{type(e).__name__}: {e}"
            report["files"][stem] = row
            continue
        (out / "gpu" / f"{stem}.vcd").write_bytes(data)
        rgb, row["own_file_status"] = _decode(data, models[m])
        if rgb is not None:
            decodes[f"own_file.{stem}"] = rgb
        row["bytes"] = len(data)
        report["files"][stem] = row
    np.savez_compressed(out / "decodes.npz", **decodes)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    bad = [s for s, r in report["files"].items()
           if any(v != "ok" for k, v in r.items() if k.endswith("status"))]
    print(f"{report['device']}: {len(report['files'])} files, {len(bad)} with an error"
          + (f": {bad[:5]}" if bad else ""))
    return 0


def _compare(a: np.ndarray | None, b: np.ndarray | None) -> dict:
    if a is None or b is None:
        return {"compared": False}
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    mse = float((d.astype(np.float64) ** 2).mean())
    return {"compared": True, "max_pixel_diff": int(d.max()),
            "pixels_differing": float((d > 0).mean()),
            "psnr_between_db": float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)}


def cmd_collect(a: argparse.Namespace) -> int:
    src = Path(a.dir)
    report = json.loads((src / "report.json").read_text())
    manifest = json.loads((WORK / "manifest.json").read_text())
    decodes = np.load(src / "decodes.npz")
    models = _models("cpu")
    rows = []
    for stem, m, _, q in _files(_images()):
        r = report["files"].get(stem, {})
        cpu_data = (WORK / "cpu" / f"{stem}.vcd").read_bytes()
        cpu_rgb, _ = _decode(cpu_data, models[m])
        if _sha(cpu_rgb) != manifest["files"][stem]["cpu_decode_sha256"]:
            sys.exit(f"gpu_portability: {stem} no longer decodes here as it did in prepare")
        gpu_path = src / "gpu" / f"{stem}.vcd"
        gpu_rgb_here, status_here = (_decode(gpu_path.read_bytes(), models[m])
                                     if gpu_path.is_file() else (None, "no GPU file"))
        rows.append({
            "file": stem, "model": m, "quality": q,
            "cpu_to_gpu": {"status": r.get("cpu_file_status", "not run"),
                           **_compare(cpu_rgb, decodes.get(f"cpu_file.{stem}"))},
            "gpu_to_cpu": {"status": status_here, "gpu_encode": r.get("encode_status", "ok"),
                           **_compare(decodes.get(f"own_file.{stem}"), gpu_rgb_here)},
            "bytes_cpu": len(cpu_data), "bytes_gpu": r.get("bytes")})
    summary = {}
    for direction in ("cpu_to_gpu", "gpu_to_cpu"):
        for m in MODELS:
            rs = [x[direction] for x in rows if x["model"] == m]
            ok = [x for x in rs if x["status"] == "ok" and x.get("compared")]
            summary[f"{direction}:{m}"] = {
                "decodes": len(rs), "errors": sum(x["status"] != "ok" for x in rs),
                "max_pixel_diff": max((x["max_pixel_diff"] for x in ok), default=None),
                "lowest_psnr_between_db": min((x["psnr_between_db"] for x in ok), default=None)}
    result = {"command": "python benchmarks/gpu_portability.py collect " + str(src),
              "device": report["device"], "device_torch": report["torch"],
              "cpu_torch": torch.__version__, "prepare_torch": manifest["torch"],
              "summary": summary, "rows": rows}
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("| direction | model | decodes | errors | max pixel diff | lowest PSNR between |")
    print("|---|---|---|---|---|---|")
    for k, v in summary.items():
        d, m = k.split(":")
        low = v["lowest_psnr_between_db"]
        print(f"| {d.replace('_', ' ')} | {m} | {v['decodes']} | {v['errors']} | "
              f"{v['max_pixel_diff']} | {'—' if low is None else f'{low:.1f} dB'} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="here: CPU files for the GPU to decode").set_defaults(
        func=cmd_prepare)
    d = sub.add_parser("device", help="on the GPU machine: decode and encode there")
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_device)
    c = sub.add_parser("collect", help="here: decode the GPU's files, compare everything")
    c.add_argument("dir", help="the device step's --out, as it came back")
    c.add_argument("--json", default=str(ROOT / "docs/results/portability/gpu.json"))
    c.set_defaults(func=cmd_collect)
    a = ap.parse_args(argv)
    return a.func(a)


if __name__ == "__main__":
    sys.exit(main())
