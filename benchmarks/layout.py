"""The CPU layouts of the transforms: ``g_a`` (encoder) and ``g_s`` (decoder)
channels-last, the default on the CPU, against NCHW, on the same model and images, in
one run.

``VaricodecModel`` runs a dense ``g_a`` channels-last on the CPU (input and weights,
:meth:`VaricodecModel._analysis_layout`) and hands a dense ``g_s`` its input
channels-last (:meth:`VaricodecModel._synthesis_layout`);
``model.analysis_channels_last = False`` / ``model.synthesis_channels_last = False``
run them NCHW as before. Another layout is another summation order: ``y`` differs by a
few float32 ulp, so a latent that lies that close to a rounding boundary can round the
other way (other bytes), and ``x̂`` may differ in its last bits. This measures both
sides: encode and decode time (whole ``compress`` / ``decompress``, the two layouts
interleaved after a warm-up, medians), how many files come out with other streams
(their rate and PSNR), and how far the decoded pixels of one file move between the two
decoder layouts::

    python benchmarks/layout.py src/varicodec/weights/hyperprior-bm.safetensors \
        --qualities 1 4 8 -o docs/results/layout/hyperprior-bm.json

Images are read from outside the repository (../shared/data/kodak); nothing is copied.
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


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("weights", help="a weights file (a dense or a gated g_a)")
    p.add_argument("--data", type=Path, default=KODAK)
    p.add_argument("--limit", type=int, default=24, help="number of images")
    p.add_argument("--qualities", type=float, nargs="+", default=[1, 4, 8],
                   help="qualities of a variable-rate model (ignored for fixed-rate)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=1, help="timed encodes per layout and file")
    p.add_argument("-o", "--output", type=Path)
    return p.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    from varicodec.imageio import load_rgb, pad_to_multiple, to_tensor, to_uint8
    from varicodec.metrics import psnr_db
    from varicodec.models import load_model
    from varicodec.quality import quality_to_lmbda

    images = sorted(a.data.glob("*.png"))[: a.limit]
    if not images:
        print(f"layout: no images in {a.data}: nothing measured", file=sys.stderr)
        return 1
    torch.set_num_threads(a.threads)
    model = load_model(a.weights)
    settings = ([{"lmbda": quality_to_lmbda(q)} for q in a.qualities]
                if model.variable_rate else [{}])
    layouts = {"channels_last": True, "nchw": False}
    rows = []

    def encode(x, kw, layout):
        model.analysis_channels_last = layouts[layout]
        t = time.perf_counter()
        coded = model.compress(x, **kw)
        return coded, time.perf_counter() - t

    def decode(coded, layout):
        model.synthesis_channels_last = layouts[layout]
        t = time.perf_counter()
        out = model.decompress(coded["strings"], coded["shape"], coded.get("lmbda_code"))
        return out["x_hat"], time.perf_counter() - t

    with torch.inference_mode():
        x0 = pad_to_multiple(to_tensor(load_rgb(images[0])), 64)
        for layout in layouts:                                   # warm-up
            decode(encode(x0, settings[0], layout)[0], layout)
        for i, path in enumerate(images):
            rgb = load_rgb(path)
            x = pad_to_multiple(to_tensor(rgb), 64)
            for kw in settings:
                times = {k: {"enc": [], "dec": []} for k in layouts}
                coded, x_hat = {}, {}
                for r in range(a.reps):
                    order = list(layouts) if (i + r) % 2 == 0 else list(layouts)[::-1]
                    for layout in order:
                        coded[layout], t = encode(x, kw, layout)
                        times[layout]["enc"].append(t)
                    for layout in order:   # the same file, both decoder layouts
                        x_hat[layout], t = decode(coded["channels_last"], layout)
                        times[layout]["dec"].append(t)
                row = {"image": path.name, "lmbda": kw.get("lmbda", model.lmbda),
                       "same_streams": coded["channels_last"]["strings"]
                       == coded["nchw"]["strings"]}
                pixels = {k: to_uint8(v[..., :rgb.shape[0], :rgb.shape[1]])
                          for k, v in x_hat.items()}
                # each file's picture (channels-last decoder): the channels-last file's is
                # pixels["channels_last"]; the NCHW file needs a decode of its own only when
                # its streams differ
                own = {"channels_last": pixels["channels_last"], "nchw": pixels["channels_last"]}
                if not row["same_streams"]:
                    own["nchw"] = to_uint8(decode(coded["nchw"], "channels_last")[0][
                        ..., :rgb.shape[0], :rgb.shape[1]])
                for layout, c in coded.items():
                    row[layout] = {"encode_s": round(median(times[layout]["enc"]), 4),
                                   "decode_s": round(median(times[layout]["dec"]), 4),
                                   "bytes": sum(len(s[0]) for s in c["strings"]),
                                   "psnr_db": round(psnr_db(rgb, own[layout]), 4)}
                row["decoder_max_pixel_diff"] = int(np.abs(
                    pixels["channels_last"].astype(int) - pixels["nchw"].astype(int)).max())
                rows.append(row)
                print(f"{path.name} λ={row['lmbda']:.4g}: encode NCHW "
                      f"{row['nchw']['encode_s']:.3f} s / channels-last "
                      f"{row['channels_last']['encode_s']:.3f} s, decode "
                      f"{row['nchw']['decode_s']:.3f} / {row['channels_last']['decode_s']:.3f}"
                      f" s, same streams: {row['same_streams']}, decoders' largest pixel "
                      f"difference {row['decoder_max_pixel_diff']}", file=sys.stderr)
    enc = [r["nchw"]["encode_s"] / r["channels_last"]["encode_s"] for r in rows]
    dec = [r["nchw"]["decode_s"] / r["channels_last"]["decode_s"] for r in rows]
    differ = [r for r in rows if not r["same_streams"]]
    summary = {
        "files": len(rows), "files_with_other_streams": len(differ),
        "encode_speedup_median": round(median(enc), 3),
        "encode_speedup_range": [round(min(enc), 3), round(max(enc), 3)],
        "decode_speedup_median": round(median(dec), 3),
        "decode_speedup_range": [round(min(dec), 3), round(max(dec), 3)],
        "decoders_max_pixel_diff": max(r["decoder_max_pixel_diff"] for r in rows),
        "bytes_change_of_differing_files": [
            r["channels_last"]["bytes"] - r["nchw"]["bytes"] for r in differ],
        "psnr_change_db_of_differing_files": [
            round(r["channels_last"]["psnr_db"] - r["nchw"]["psnr_db"], 4) for r in differ],
    }
    result = {"weights": a.weights, "model": model.name, "threads": a.threads,
              "reps": a.reps, "torch": torch.__version__, "load_average": os.getloadavg(),
              "summary": summary, "rows": rows}
    print(json.dumps(summary, indent=1))
    if a.output:
        a.output.parent.mkdir(parents=True, exist_ok=True)
        a.output.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
