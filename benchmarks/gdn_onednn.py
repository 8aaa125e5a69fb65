"""GDN / IGDN with the 1×1 convolution through oneDNN against ``F.conv2d``, on the same
model and images, in one run.

``InplaceGDN`` (``varicodec.layers.gdn``) runs the norm's 1×1 convolution of a
channels-last float32 CPU input through ``torch.mkldnn_convolution``;
``gdn.ONEDNN = False`` gives the previous path, ``F.conv2d``, which on one thread hands
a 1×1 convolution of a small batch to its plain matrix product (from two threads on it
takes oneDNN too). This checks that every decoded image and every stream is
bit-identical between the two and measures whole ``compress`` / ``decompress`` times
(the two paths interleaved after a warm-up, medians), per quality::

    python benchmarks/gdn_onednn.py --limit 4 --qualities 1 8 --threads 1 \
        -o docs/results/layout/gdn-onednn-hyperprior-ecgbm-1t.json
    python benchmarks/gdn_onednn.py --joint-random --limit 3 --threads 1

Default model: the bundled ``hyperprior-ecgbm``. ``--joint-random``: the mbt2018-size
joint model of ``benchmarks/joint_speed.py`` (random weights, woken), the model of
issue 15's figures. Images are read from outside the repository (../shared/data/kodak);
nothing is copied.
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
PATHS = ("onednn", "conv2d")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", nargs="?", help="a weights file (default: the bundled model)")
    p.add_argument("--joint-random", action="store_true",
                   help="the random mbt2018-size joint model of joint_speed.py instead")
    p.add_argument("--data", type=Path, default=KODAK)
    p.add_argument("--limit", type=int, default=4, help="number of images")
    p.add_argument("--qualities", type=float, nargs="+", default=[1, 8],
                   help="qualities of a variable-rate model (ignored for fixed-rate)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=3, help="timed runs per path and file")
    p.add_argument("-o", "--output", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from varicodec.imageio import load_rgb, pad_to_multiple, to_tensor
    from varicodec.layers import gdn
    from varicodec.models import load_model
    from varicodec.quality import quality_to_lmbda
    from varicodec.util import retain_freed_memory

    if not a.data.is_dir():
        print(f"Kodak images not found at {a.data} (see ../shared/data/README.md); "
              "nothing measured", file=sys.stderr)
        return 1
    paths = sorted(p for p in a.data.iterdir() if p.suffix.lower() == ".png")[:a.limit]
    torch.set_num_threads(a.threads)
    retain_freed_memory()  # as the varicodec command does
    images = [(p.stem, pad_to_multiple(to_tensor(load_rgb(p)), 64)) for p in paths]
    if a.joint_random:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from joint_speed import make_model

        model = make_model(1, "base", images[0][1])
        name = "joint-base mbt2018 size (N=M=192), random weights (joint_speed.py)"
    else:
        weights = a.weights or str(ROOT / "src" / "varicodec" / "weights"
                                   / "hyperprior-ecgbm.safetensors")
        model = load_model(weights)
        name = f"{model.name} N={model.config['N']} M={model.config['M']} ({weights})"
    qualities = a.qualities if model.variable_rate else [None]
    rows = []
    for stem, x in images:
        for q in qualities:
            lm = quality_to_lmbda(q) if q is not None else None
            t: dict[str, dict[str, list[float]]] = {k: {"enc": [], "dec": []} for k in PATHS}
            out: dict[str, torch.Tensor] = {}
            for r in range(a.reps + 1):  # the first round is the warm-up
                for path in (PATHS if r % 2 else PATHS[::-1]):
                    gdn.ONEDNN = path == "onednn"
                    try:
                        t0 = time.perf_counter()
                        c = model.compress(x, lmbda=lm)
                        t1 = time.perf_counter()
                        d = model.decompress(c["strings"], c["shape"], c["lmbda_code"])
                        t2 = time.perf_counter()
                    finally:
                        gdn.ONEDNN = True
                    if r:
                        t[path]["enc"].append(t1 - t0)
                        t[path]["dec"].append(t2 - t1)
                    out[path] = d["x_hat"]
                    out[path + "_bytes"] = sum(len(s[0]) for s in c["strings"])
            row = {"image": stem, "quality": q,
                   "identical_x_hat": bool(torch.equal(out["onednn"], out["conv2d"])),
                   "identical_bytes": out["onednn_bytes"] == out["conv2d_bytes"]}
            for k in PATHS:
                row[f"encode_{k}_s"] = median(t[k]["enc"])
                row[f"decode_{k}_s"] = median(t[k]["dec"])
            row["encode_speedup"] = row["encode_conv2d_s"] / row["encode_onednn_s"]
            row["decode_speedup"] = row["decode_conv2d_s"] / row["decode_onednn_s"]
            rows.append(row)
            print(f"{stem} q{q}: decode {row['decode_conv2d_s']:.3f} -> "
                  f"{row['decode_onednn_s']:.3f} s ({row['decode_speedup']:.2f}x), encode "
                  f"{row['encode_conv2d_s']:.3f} -> {row['encode_onednn_s']:.3f} s "
                  f"({row['encode_speedup']:.2f}x), identical x_hat {row['identical_x_hat']}",
                  file=sys.stderr)
    result = {"command": "python benchmarks/gdn_onednn.py " + " ".join(
                  sys.argv[1:] if argv is None else argv),
              "model": name, "threads": a.threads, "reps": a.reps,
              "torch": torch.__version__, "load_average": os.getloadavg(),
              "median_decode_speedup": float(np.median([r["decode_speedup"] for r in rows])),
              "median_encode_speedup": float(np.median([r["encode_speedup"] for r in rows])),
              "all_identical": all(r["identical_x_hat"] and r["identical_bytes"] for r in rows),
              "rows": rows}
    text = json.dumps(result, indent=1)
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
