"""Cost of a model size on this CPU: encode/decode time and FLOPs of several weights files,
as ratios against the first, on the same Kodak images in one run.

Made for issue 11's question "is N=128/M=192 the better default for its speed?": give it
the 128 line and the same line widened to N=192/M=320 (``varicodec widen``), which code
the same bytes and pictures, so the ratios are the pure price of the size::

    varicodec widen checkpoints/gpu/hyperprior-bm-128.safetensors --N 192 --M 320 \\
        --out /tmp/bm-192.safetensors
    python benchmarks/size_speed.py checkpoints/gpu/hyperprior-bm-128.safetensors \\
        /tmp/bm-192.safetensors --limit 4 --json docs/results/size_speed.json

Per image and thread count: one untimed warm-up round, then ``--reps`` rounds with the
models interleaved; medians. FLOPs from what executes (``varicodec.eval.flops``), bytes
from the real bitstream. A weights file given as ``PATH:nchw`` runs with its transforms
in NCHW (``analysis_channels_last`` / ``synthesis_channels_last`` off: a dense model as
CompressAI runs it, docs/results/layout.md), so one run can hold both layouts::

    python benchmarks/size_speed.py checkpoints/gpu/hyperprior-bm-128.safetensors:nchw \
        checkpoints/gpu/hyperprior-bm-128.safetensors \
        src/varicodec/weights/hyperprior-ecgbm.safetensors --limit 4
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="+", help="weights files; the first is the baseline")
    p.add_argument("--data", type=Path, default=KODAK)
    p.add_argument("--limit", type=int, default=4, help="number of Kodak images")
    p.add_argument("--lmbda", type=float, default=0.013, help="λ of variable-rate models")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions per image")
    p.add_argument("--json", type=Path)
    return p.parse_args(argv)


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main(argv=None) -> int:
    a = parse_args(argv)
    from varicodec.eval.flops import count_flops, parameter_count
    from varicodec.imageio import load_rgb, pad_to_multiple, to_tensor
    from varicodec.models import load_model

    images = sorted(a.data.glob("*.png"))[: a.limit]
    if not images:
        print(f"size_speed: no images in {a.data}: nothing measured", file=sys.stderr)
        return 1
    xs = [pad_to_multiple(to_tensor(load_rgb(p)), 64) for p in images]
    models = {}
    for w in a.weights:
        path, _, layout = w.partition(":")
        if layout not in ("", "nchw"):
            print(f"size_speed: unknown layout {layout!r} in {w} (PATH or PATH:nchw)",
                  file=sys.stderr)
            return 2
        m = load_model(path)
        m.analysis_channels_last = m.synthesis_channels_last = layout != "nchw"
        kw = {"lmbda": a.lmbda} if m.variable_rate else {}
        models[w] = (m, kw)
    info = {}
    with torch.no_grad():   # FlopCounterMode does not work under inference_mode
        for w, (m, kw) in models.items():
            c, enc_flops = count_flops(m.compress, xs[0], **kw)
            _, dec_flops = count_flops(m.decompress, c["strings"], c["shape"], c.get("lmbda_code"))
            info[w] = {"name": m.name, "N": m.config["N"], "M": m.config["M"],
                       "parameters": parameter_count(m), "encode_gflops": enc_flops / 1e9,
                       "decode_gflops": dec_flops / 1e9}
    rows = []
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        enc = {w: [] for w in models}
        dec = {w: [] for w in models}
        nbytes = {w: 0 for w in models}
        with torch.inference_mode():
            for m, kw in models.values():
                c = m.compress(xs[0], **kw)
                m.decompress(c["strings"], c["shape"], c.get("lmbda_code"))
            for x in xs:
                for r in range(a.reps):
                    for w, (m, kw) in models.items():
                        c, te = _timed(m.compress, x, **kw)
                        _, td = _timed(m.decompress, c["strings"], c["shape"],
                                       c.get("lmbda_code"))
                        enc[w].append(te)
                        dec[w].append(td)
                        if r == 0:
                            nbytes[w] += sum(len(s[0]) for s in c["strings"])
        base = a.weights[0]
        for w in models:
            rows.append({"weights": w, "threads": threads, "encode_s": median(enc[w]),
                         "decode_s": median(dec[w]), "stream_bytes": nbytes[w],
                         "encode_vs_first": median(enc[w]) / median(enc[base]),
                         "decode_vs_first": median(dec[w]) / median(dec[base])})
    result = {"images": [p.name for p in images], "lmbda": a.lmbda, "reps": a.reps,
              "load_average": os.getloadavg(), "torch": torch.__version__,
              "models": info, "rows": rows}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1))
    print("| weights | N/M | params | GFLOPs enc / dec | threads | encode s (× first) "
          "| decode s (× first) | stream bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        i = info[r["weights"]]
        print(f"| {Path(r['weights']).name} | {i['N']}/{i['M']} | {i['parameters'] / 1e6:.1f} M "
              f"| {i['encode_gflops']:.1f} / {i['decode_gflops']:.1f} | {r['threads']} "
              f"| {r['encode_s']:.3f} ({r['encode_vs_first']:.2f}×) "
              f"| {r['decode_s']:.3f} ({r['decode_vs_first']:.2f}×) | {r['stream_bytes']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
