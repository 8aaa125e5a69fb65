"""Wall-clock encode/decode of trained gated models against their dense fixed-rate baselines.

For every quality q this times, on the same Kodak images and in one run with the
repetitions interleaved after one untimed warm-up round, ``model.compress`` and
``model.decompress`` of

* ``base``: the dense fixed-rate model at q (CompressAI's ScaleHyperprior, nothing added),
* ``ecg``: the gated fixed-rate model at q (sparse execution of live channels),
* ``ecgbm``: the one universal model at λ_q (sparse execution),

and reports the speed-ups ``time(base) / time(model)`` (> 1 = faster) with 1 and 2 torch
threads, plus each model's measured sparsity. Weights come from ``--dir`` as written by
``scripts/paper_grid.sh``::

    nice -n 10 .venv/bin/python benchmarks/grid_speed.py --limit 4 \\
        --json docs/results/hyperprior/speed.json

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
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def _time(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _sparsity(model) -> float | None:
    values = [float(s) for s in model.sparsity().values() if s is not None]
    return sum(values) / len(values) if values else None


def main(argv=None) -> int:
    args = parse_args(argv)
    from varicodec.imageio import load_rgb, to_tensor
    from varicodec.models import load_model

    images = sorted(args.data.glob("*.png"))[: args.limit]
    if not images:
        print(f"grid_speed: no Kodak images in {args.data}: nothing measured", file=sys.stderr)
        return 1
    xs = [to_tensor(load_rgb(p)) for p in images]
    ecgbm = load_model(args.dir / "hyperprior-ecgbm.safetensors")
    rows = []
    for q in (int(v) for v in args.quality.split(",")):
        lam = LAMBDAS[q - 1]
        # name → (model, keyword arguments of its compress call)
        models = {"base": (load_model(args.dir / f"hyperprior-base-q{q}.safetensors"), {}),
                  "ecg": (load_model(args.dir / f"hyperprior-ecg-q{q}.safetensors"), {}),
                  "ecgbm": (ecgbm, {"lmbda": lam})}
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
                            s = _sparsity(model)
                            enc[name].append(te)
                            dec[name].append(td)
                            if s is not None:
                                sparsity[name].append(s)
            row = {"quality": q, "lmbda": lam, "threads": threads,
                   "encode_s": {k: median(v) for k, v in enc.items()},
                   "decode_s": {k: median(v) for k, v in dec.items()},
                   "sparsity": {k: (sum(v) / len(v) if v else None) for k, v in sparsity.items()}}
            for k in ("ecg", "ecgbm"):
                row[f"{k}_encode_speedup"] = row["encode_s"]["base"] / row["encode_s"][k]
                row[f"{k}_decode_speedup"] = row["decode_s"]["base"] / row["decode_s"][k]
            rows.append(row)
            print(f"q{q} {threads}t  encode ×{row['ecg_encode_speedup']:.2f} (ecg) "
                  f"×{row['ecgbm_encode_speedup']:.2f} (ecgbm)  decode "
                  f"×{row['ecg_decode_speedup']:.2f} (ecg) ×{row['ecgbm_decode_speedup']:.2f} "
                  f"(ecgbm)  base {row['encode_s']['base']:.2f}/{row['decode_s']['base']:.2f} s",
                  flush=True)
    result = {"images": [p.name for p in images], "reps": args.reps,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "load_average": os.getloadavg(), "torch": torch.__version__, "rows": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    print("\n| q | threads | ecg enc × | ecg dec × | ecgbm enc × | ecgbm dec × "
          "| sparsity ecg / ecgbm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quality']} | {r['threads']} | {r['ecg_encode_speedup']:.2f} | "
              f"{r['ecg_decode_speedup']:.2f} | {r['ecgbm_encode_speedup']:.2f} | "
              f"{r['ecgbm_decode_speedup']:.2f} | {r['sparsity']['ecg']:.2f} / "
              f"{r['sparsity']['ecgbm']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
