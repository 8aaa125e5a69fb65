"""Wall-clock encode/decode of trained gated models against their dense fixed-rate baselines.

For every quality q this times, on the same Kodak images and in one run with the
repetitions interleaved after one untimed warm-up round,

* ``compressai``: CompressAI's own ``compress`` / ``decompress`` on a fresh network of the
  architecture's CompressAI class holding the dense base model's weights, as shipped
  (its GDN, NCHW) — the issue's "dense CompressAI";
* ``base``: the dense fixed-rate model at q through ``VaricodecModel`` (our CPU layout,
  nothing gated);
* ``ecg``: the gated fixed-rate model at q (sparse execution of live channels);
* ``ecgbm``: the one universal gated model at λ_q (sparse execution), when there is one,

and reports the speed-ups ``time(base) / time(model)`` and ``time(compressai) /
time(model)`` (> 1 = faster) with 1 and 2 torch threads, plus each model's measured
sparsity. Weights come from ``--dir`` as written by ``scripts/paper_grid.sh``: with
``--arch hyperprior`` (the default) issue 7's files ``hyperprior-{base,ecg}-q{q}`` and
``hyperprior-ecgbm``; with ``--arch hyperprior-paper``, ``mean`` or ``joint`` that grid's
``{arch}-{base,ecg}-q{q}`` (``--dense base-extra`` times the fair baseline's weights
instead: the same network) and ``{arch}-ecgbm`` if it exists (``--ecgbm`` names another
file, ``--ecgbm none`` leaves it out)::

    nice -n 10 .venv/bin/python benchmarks/grid_speed.py --limit 4 \\
        --json docs/results/hyperprior/speed.json
    python benchmarks/grid_speed.py --arch hyperprior-paper --quality 1,2,3,4,5 \\
        --ecgbm checkpoints/gpu/hyperprior-ecgbm-128.safetensors --json speed.json

The OpenMP wait policy is set to passive (see benchmarks/sparse_speed.py for why).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from statistics import median

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, default=ROOT / "checkpoints" / "paper")
    p.add_argument("--data", type=Path, default=KODAK)
    p.add_argument("--limit", type=int, default=4, help="number of Kodak images")
    p.add_argument("--quality", default="1,2,3,4,5,6,7,8")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions per image")
    p.add_argument("--arch", default="hyperprior",
                   help="file prefix of the grid: hyperprior (issue 7), hyperprior-paper, "
                        "mean or joint")
    p.add_argument("--dense", default="base", choices=("base", "base-extra"),
                   help="which dense fixed-rate files to time as `base`")
    p.add_argument("--ecgbm", default=None,
                   help="the universal gated model (default: {arch}-ecgbm in --dir if "
                        "present; 'none' to leave it out)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _time(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _sparsity(model) -> float | None:
    values = [float(s) for s in model.sparsity().values() if s is not None]
    return sum(values) / len(values) if values else None


class _CompressAI:
    """CompressAI's coder with the call signature of ``VaricodecModel`` used below."""

    def __init__(self, net) -> None:
        self.net = net

    def compress(self, x):
        return self.net.compress(x)

    def decompress(self, strings, shape, _lmbda_code=None):
        return self.net.decompress(strings, shape)


def _paths(args, q: int) -> tuple[Path, Path]:
    """(dense, ecg) weight files of quality ``q``."""
    return (args.dir / f"{args.arch}-{args.dense}-q{q}.safetensors",
            args.dir / f"{args.arch}-ecg-q{q}.safetensors")


def main(argv=None) -> int:
    args = parse_args(argv)
    from varicodec.imageio import load_rgb, to_tensor
    from varicodec.models import load_model

    images = sorted(args.data.glob("*.png"))[: args.limit]
    if not images:
        print(f"grid_speed: no Kodak images in {args.data}: nothing measured", file=sys.stderr)
        return 1
    xs = [to_tensor(load_rgb(p)) for p in images]
    qualities = [int(v) for v in args.quality.split(",")]
    ecgbm_path = (None if args.ecgbm == "none" else Path(args.ecgbm) if args.ecgbm
                  else args.dir / f"{args.arch}-ecgbm.safetensors")
    if ecgbm_path is not None and not ecgbm_path.is_file():
        if args.ecgbm:
            print(f"grid_speed: no such weights {ecgbm_path}", file=sys.stderr)
            return 1
        ecgbm_path = None  # the grid has no universal model (yet)
    missing = [p for q in qualities for p in _paths(args, q) if not p.is_file()]
    if missing:
        print(f"grid_speed: no weights {missing[0]} (train the grid: scripts/paper_grid.sh)",
              file=sys.stderr)
        return 1
    ecgbm = load_model(ecgbm_path) if ecgbm_path else None
    gated = ("ecg", "ecgbm") if ecgbm else ("ecg",)
    rows = []
    for q in qualities:
        lam = LAMBDAS[q - 1]
        dense_path, ecg_path = _paths(args, q)
        dense = load_model(dense_path)
        # name → (model, keyword arguments of its compress call)
        models = {"compressai": (_CompressAI(dense.compressai_network()), {}),
                  "base": (dense, {}), "ecg": (load_model(ecg_path), {})}
        if ecgbm:
            models["ecgbm"] = (ecgbm, {"lmbda": lam})
        for threads in (int(v) for v in args.threads.split(",")):
            torch.set_num_threads(threads)
            enc = {k: [] for k in models}
            dec = {k: [] for k in models}
            sparsity = {k: [] for k in models}
            with torch.inference_mode():
                for model, kw in models.values():  # warm-up: one untimed round each
                    c = model.compress(xs[0], **kw)
                    model.decompress(c["strings"], c["shape"], c.get("lmbda_code"))
                for x in xs:
                    for _ in range(args.reps):
                        for name, (model, kw) in models.items():
                            c, te = _time(model.compress, x, **kw)
                            _, td = _time(model.decompress, c["strings"], c["shape"],
                                          c.get("lmbda_code"))
                            s = _sparsity(model) if name != "compressai" else None
                            enc[name].append(te)
                            dec[name].append(td)
                            if s is not None:
                                sparsity[name].append(s)
            row = {"quality": q, "lmbda": lam, "threads": threads,
                   "encode_s": {k: median(v) for k, v in enc.items()},
                   "decode_s": {k: median(v) for k, v in dec.items()},
                   "sparsity": {k: (sum(v) / len(v) if v else None) for k, v in sparsity.items()}}
            for k in gated:
                for ref, suffix in (("base", ""), ("compressai", "_vs_compressai")):
                    row[f"{k}_encode_speedup{suffix}"] = row["encode_s"][ref] / row["encode_s"][k]
                    row[f"{k}_decode_speedup{suffix}"] = row["decode_s"][ref] / row["decode_s"][k]
            rows.append(row)
            print(f"q{q} {threads}t  " + "  ".join(
                f"{k}: enc ×{row[f'{k}_encode_speedup']:.2f} dec ×{row[f'{k}_decode_speedup']:.2f}"
                f" (vs CompressAI ×{row[f'{k}_encode_speedup_vs_compressai']:.2f} / "
                f"×{row[f'{k}_decode_speedup_vs_compressai']:.2f})" for k in gated)
                + f"  base {row['encode_s']['base']:.2f}/{row['decode_s']['base']:.2f} s",
                flush=True)
    result = {"arch": args.arch, "dense": args.dense,
              "ecgbm": str(ecgbm_path) if ecgbm_path else None,
              "images": [p.name for p in images], "reps": args.reps,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "load_average": os.getloadavg(), "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    head = " | ".join(f"{k} enc × | {k} dec × | {k} dec × CompressAI" for k in gated)
    print(f"\n| q | threads | {head} | sparsity {' / '.join(gated)} |")
    print("|---|---|" + "---|" * (3 * len(gated) + 1))
    for r in rows:
        cells = " | ".join(f"{r[f'{k}_encode_speedup']:.2f} | {r[f'{k}_decode_speedup']:.2f} | "
                           f"{r[f'{k}_decode_speedup_vs_compressai']:.2f}" for k in gated)
        sp = " / ".join(f"{r['sparsity'][k]:.2f}" for k in gated)
        print(f"| {r['quality']} | {r['threads']} | {cells} | {sp} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
