"""Joint model: CompressAI's sequential coder against the wavefront coder (issue 15).

For each thread count, quality and Kodak image, the same model codes the image with
three coders, interleaved (their order reversed on every other repetition, after a
warm-up of each):

* ``compressai``: CompressAI's own ``JointAutoregressiveHierarchicalPriors.compress`` /
  ``decompress``, called on the model's network as CompressAI ships them (NCHW
  transforms, position-by-position loop, no guard, no symbol check; the bit-rate
  modulator's hooks stay on for a ``bm`` model): the baseline of issue 15's targets;
* ``sequential``: the same loop through ``VaricodecModel.compress`` / ``decompress``
  (format version 2: guard stream and symbol check, ``g_a`` / ``g_s`` in the CPU
  layouts of docs/results/layout.md), i.e. CompressAI's loop with everything else
  this codec adds;
* ``wavefront``: ``VaricodecModel``'s default coder (format version 5).

It reports the median encode and decode seconds of each, the speed-ups (CompressAI /
wavefront, the target's figure, and sequential / wavefront), the real ``.vcd`` file
bytes of our two coders (version 2 =
sequential order, version 4 = wavefront order; header and CRC included) and of the y
stream alone (the part the coding order changes: version 4 files also carry a shorter,
hash-coded guard stream, issue 14), the PSNR of each reconstruction, and the synthesis
``g_s`` (NCHW as the sequential decoder runs it, and channels-last as the wavefront
decoder runs it) and analysis ``g_a`` alone (in the layout both encoders run it in,
channels-last on the CPU since ``VaricodecModel._analysis_layout``; floors under
both decoders and both encoders: "ceiling" = sequential seconds / floor, the speed-up
of a coder whose entropy coding cost nothing)::

    python benchmarks/joint_speed.py                         # kodim01, 05, 13 at q 1, 5
    python benchmarks/joint_speed.py --all --qualities 1 2 3 4 5 6 7 8 --repeats 3
    python benchmarks/joint_speed.py --names kodim23 --threads 2 -o out.json

There are no trained joint weights in the repository: the model is CompressAI's
``mbt2018`` at its published size (N = 192; M = 192 for qualities 1-4, 320 for 5-8),
randomly initialised (seed 0) and then woken so that its symbols are not trivial:
the last layer of ``g_a`` is rescaled per channel so that ``y`` on the first image
has a standard deviation of ``A · 0.97^c`` quantisation steps in channel ``c``
(``A = 0.5 · 1.4^(quality − 1)``: higher quality, more bits), ``h_a``'s last layer so
that ``z`` has 2, and the entropy-parameter network's last bias so that the predicted
scales start at those deviations. The rates and PSNRs are therefore those of random
weights (PSNR around that of a flat grey image): they show that both coders give the
same file size and the same picture, not what a trained model achieves.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
ORDERS = ("sequential", "wavefront")
CODERS = ("compressai",) + ORDERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=KODAK, help="folder of Kodak PNGs")
    p.add_argument("--names", nargs="+", default=["kodim01", "kodim05", "kodim13"],
                   help="image stems to code (default: three)")
    p.add_argument("--all", action="store_true", help="all images in --data")
    p.add_argument("--qualities", nargs="+", type=int, default=[1, 5],
                   help="mbt2018 quality sizes, 1-8 (M = 192 up to 4, 320 from 5)")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=1, help="timed runs per coder (median)")
    p.add_argument("--variant", default="base", choices=["base", "ecg", "bm", "ecgbm"])
    p.add_argument("--weights", type=Path,
                   help="trained joint weights instead of the woken random model; a "
                        "variable-rate one codes at λ of each --qualities entry")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave the C library's malloc as it is (by default freed memory is "
                        "kept for reuse, as the varicodec command does: util.retain_freed_memory)")
    p.add_argument("-o", "--output", type=Path, help="also write the JSON here")
    return p.parse_args(argv)


def make_model(quality: int, variant: str, first: torch.Tensor):
    """The woken random mbt2018-size joint model (see the module docstring)."""
    from varicodec.models import create_model

    if not 1 <= quality <= 8:
        sys.exit(f"quality must be 1..8, got {quality}")
    torch.manual_seed(0)
    m_width = 192 if quality <= 4 else 320
    model = create_model(f"joint-{variant}", N=192, M=m_width).eval()
    net = model.net
    target = 0.5 * 1.4 ** (quality - 1) * 0.97 ** torch.arange(m_width, dtype=torch.float32)
    run = torch.nn.Sequential.forward  # the plain transforms, without the modulator's hooks
    with torch.no_grad():
        y = run(net.g_a, first)
        gain = target / y.std(dim=(0, 2, 3))
        net.g_a[-1].weight.mul_(gain.view(-1, 1, 1, 1))  # a Conv2d: output channels first
        net.g_a[-1].bias.mul_(gain)
        z = run(net.h_a, run(net.g_a, first))
        net.h_a[-1].weight.mul_(2.0 / z.std())
        net.h_a[-1].bias.mul_(2.0 / z.std())
        last = net.entropy_parameters[-1]
        last.weight.mul_(0.1)
        last.bias.zero_()
        last.bias[:m_width] = target
    model.update(force=True)
    return model


def compressai_roundtrip(model, x: torch.Tensor,
                         lm: float | None) -> tuple[float, float, torch.Tensor, int]:
    """CompressAI's own coder on the model's network: (encode s, decode s, x̂, y bytes).
    A variable-rate model's modulator codes at ``lm`` (as quantised to the file's λ code)."""
    from compressai.models import JointAutoregressiveHierarchicalPriors as Joint

    lmbda = None
    if model.variable_rate:
        code = model.lmbda_range.encode(lm)
        lmbda = model._lmbda_batch(model.lmbda_range.decode(code), x.shape[0], x.device)
    with torch.no_grad(), model._at(lmbda):
        t0 = time.perf_counter()
        coded = Joint.compress(model.net, x)
        t1 = time.perf_counter()
        dec = Joint.decompress(model.net, coded["strings"], coded["shape"])
        t2 = time.perf_counter()
    return t1 - t0, t2 - t1, dec["x_hat"], len(coded["strings"][0][0])


def _lmbda(model) -> float | None:
    """A variable-rate model codes at the geometric middle of its λ range."""
    r = model.lmbda_range
    return None if r is None else float(np.sqrt(r.min * r.max))


def image_tensor(path: Path) -> tuple[np.ndarray, torch.Tensor]:
    from varicodec.imageio import load_rgb, pad_to_multiple, to_tensor

    rgb = load_rgb(path)
    return rgb, pad_to_multiple(to_tensor(rgb), 64)


def file_bytes(model, fp: bytes, rgb: np.ndarray, coded: dict, order: str) -> int:
    """Size of the ``.vcd`` file these streams make (version 2 for the sequential order,
    the current version for the wavefront order: 4, whose guard may be hash-coded)."""
    from varicodec.codec.format import FORMAT_VERSION, Container

    s = coded["strings"]
    return len(Container(
        model_name=model.name, fingerprint=fp, width=rgb.shape[1], height=rgb.shape[0],
        y=s[0][0], z=s[1][0], side=s[2][0] if model.gated else b"",
        lmbda_code=coded["lmbda_code"], guard=s[-1][0],
        version=2 if order == "sequential" else FORMAT_VERSION).pack())


def measure(model, fp: bytes, rgb: np.ndarray, x: torch.Tensor, repeats: int,
            lm: float | None = None) -> dict:
    """``lm``: λ of a variable-rate model (default: the middle of its range)."""
    from varicodec.imageio import to_uint8
    from varicodec.metrics import psnr_db

    lm = _lmbda(model) if lm is None else lm

    times: dict[str, dict[str, list[float]]] = {o: {"enc": [], "dec": []} for o in CODERS}
    synth: list[float] = []
    synth_cl: list[float] = []
    analysis: list[float] = []
    out: dict = {}
    for r in range(repeats):
        for order in (CODERS if r % 2 == 0 else CODERS[::-1]):
            if order == "compressai":
                enc, dec_s, rec, y_bytes = compressai_roundtrip(model, x, lm)
                times[order]["enc"].append(enc)
                times[order]["dec"].append(dec_s)
                rec = to_uint8(rec[..., :rgb.shape[0], :rgb.shape[1]])
                out[order] = {"y_bytes": y_bytes, "psnr_db": round(psnr_db(rgb, rec), 3)}
                continue
            t0 = time.perf_counter()
            coded = model.compress(x, lmbda=lm, order=order)
            t1 = time.perf_counter()
            dec = model.decompress(coded["strings"], coded["shape"], coded["lmbda_code"],
                                   order=order)
            t2 = time.perf_counter()
            times[order]["enc"].append(t1 - t0)
            times[order]["dec"].append(t2 - t1)
            rec = to_uint8(dec["x_hat"][..., :rgb.shape[0], :rgb.shape[1]])
            out[order] = {"bytes": file_bytes(model, fp, rgb, coded, order),
                          "y_bytes": len(coded["strings"][0][0]),
                          "psnr_db": round(psnr_db(rgb, rec), 3), "y_hat": dec["y_hat"]}
        with torch.no_grad():
            # no hooks; NCHW as the sequential decoder runs it, channels-last as ours does
            y_hat = out["wavefront"]["y_hat"].contiguous()
            t0 = time.perf_counter()
            torch.nn.Sequential.forward(model.net.g_s, y_hat)
            synth.append(time.perf_counter() - t0)
            y_hat = y_hat.contiguous(memory_format=torch.channels_last)
            t0 = time.perf_counter()
            torch.nn.Sequential.forward(model.net.g_s, y_hat)
            synth_cl.append(time.perf_counter() - t0)
            with model._analysis_layout(x) as xa:   # the layout both encoders run it in
                t0 = time.perf_counter()
                torch.nn.Sequential.forward(model.net.g_a, xa)
                analysis.append(time.perf_counter() - t0)
    res: dict = {}
    for order in ORDERS:
        res[order] = {"encode_s": round(median(times[order]["enc"]), 3),
                      "decode_s": round(median(times[order]["dec"]), 3),
                      "bytes": out[order]["bytes"], "y_bytes": out[order]["y_bytes"],
                      "psnr_db": out[order]["psnr_db"]}
    c = out["compressai"]
    res["compressai"] = {"encode_s": round(median(times["compressai"]["enc"]), 3),
                         "decode_s": round(median(times["compressai"]["dec"]), 3),
                         "y_bytes": c["y_bytes"], "psnr_db": c["psnr_db"]}
    s, w = res["sequential"], res["wavefront"]
    # the target's figures: against CompressAI's own coder
    res["decode_speedup_vs_compressai"] = round(res["compressai"]["decode_s"] / w["decode_s"], 2)
    res["encode_speedup_vs_compressai"] = round(res["compressai"]["encode_s"] / w["encode_s"], 2)
    res["y_rate_change_vs_compressai_pct"] = round(
        100 * (w["y_bytes"] - c["y_bytes"]) / c["y_bytes"], 4)
    res["decode_speedup"] = round(s["decode_s"] / w["decode_s"], 2)
    res["encode_speedup"] = round(s["encode_s"] / w["encode_s"], 2)
    res["rate_change_pct"] = round(100 * (w["bytes"] - s["bytes"]) / s["bytes"], 4)
    # the y stream alone: what the coding order changes (the files also differ in their
    # guard, positions-coded for the sequential loop, hash-coded for wavefront files)
    res["y_rate_change_pct"] = round(100 * (w["y_bytes"] - s["y_bytes"]) / s["y_bytes"], 4)
    res["y_hat_max_abs_diff"] = float(
        (out["wavefront"]["y_hat"] - out["sequential"]["y_hat"]).abs().max())
    res["g_s_s"] = round(median(synth), 3)
    res["g_s_channels_last_s"] = round(median(synth_cl), 3)
    res["g_a_s"] = round(median(analysis), 3)
    res["bpp"] = round(8 * w["bytes"] / (rgb.shape[0] * rgb.shape[1]), 4)
    return res


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"Kodak images not found at {args.data} (see ../shared/data/README.md); "
              "nothing measured", file=sys.stderr)
        return 1
    paths = sorted(p for p in args.data.iterdir() if p.suffix.lower() == ".png")
    if not args.all:
        missing = sorted(set(args.names) - {p.stem for p in paths})
        if missing:
            print(f"images {missing} not found in {args.data}; nothing measured",
                  file=sys.stderr)
            return 1
        paths = [p for p in paths if p.stem in args.names]
    if not paths:
        print(f"no PNG images in {args.data}; nothing measured", file=sys.stderr)
        return 1
    from varicodec.models import weights_fingerprint
    from varicodec.util import retain_freed_memory

    retained = False if args.default_malloc else retain_freed_memory()
    load_before = os.getloadavg()[0]

    images = [(p.stem, *image_tensor(p)) for p in paths]
    rows = []
    trained = None
    if args.weights is not None:
        from varicodec.models import load_model

        trained = load_model(args.weights)
        if trained.arch != "joint":
            print(f"{args.weights} holds a {trained.name} model, not a joint one",
                  file=sys.stderr)
            return 1
    for quality in args.qualities:
        if trained is not None:
            from varicodec.quality import quality_to_lmbda

            model = trained
            lm = quality_to_lmbda(quality) if model.variable_rate else None
        else:
            model = make_model(quality, args.variant, images[0][2])
            lm = _lmbda(model)
        fp = weights_fingerprint(model)
        for threads in args.threads:
            torch.set_num_threads(threads)
            # warm-up: each coder once on a 256×256 crop
            for order in ORDERS:
                c = model.compress(images[0][2][..., :256, :256], lmbda=lm, order=order)
                model.decompress(c["strings"], c["shape"], c["lmbda_code"], order=order)
            compressai_roundtrip(model, images[0][2][..., :256, :256], lm)
            for name, rgb, x in images:
                row = {"image": name, "quality": quality, "threads": threads,
                       **measure(model, fp, rgb, x, args.repeats, lm)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    result = {
        "command": "python benchmarks/joint_speed.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv),
        "model": (f"{trained.name} N={trained.config['N']} M={trained.config['M']}, trained: "
                  f"{args.weights}" if trained is not None else
                  f"joint-{args.variant}, mbt2018 size, random weights woken (see docstring)"),
        "torch": torch.__version__, "retain_freed_memory": retained,
        "load_average": [load_before, os.getloadavg()[0]], "rows": rows,
    }
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(markdown(rows))
    return 0


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table: seconds of the three coders, the speed-ups against
    CompressAI's coder (the target) and our sequential one, ``g_a`` / ``g_s`` alone,
    y-stream bytes and PSNR."""
    out = ["| image | q | threads | enc CompressAI / seq / wf s | enc × | enc × seq | "
           "g_a s | dec CompressAI / seq / wf s | dec × | dec × seq | g_s s (CL) | "
           "y bytes CompressAI / wf | y rate Δ % | PSNR CompressAI / wf |",
           "|" + "---|" * 14]
    for r in rows:
        c, s, w = r["compressai"], r["sequential"], r["wavefront"]
        cl = r.get("g_s_channels_last_s", r["g_s_s"])
        out.append(
            f"| {r['image']} | {r['quality']} | {r['threads']} | {c['encode_s']:.2f} / "
            f"{s['encode_s']:.2f} / {w['encode_s']:.2f} | "
            f"**{r['encode_speedup_vs_compressai']:.2f}** | {r['encode_speedup']:.2f} | "
            f"{r['g_a_s']:.2f} | {c['decode_s']:.2f} / {s['decode_s']:.2f} / "
            f"{w['decode_s']:.2f} | **{r['decode_speedup_vs_compressai']:.2f}** | "
            f"{r['decode_speedup']:.2f} | {r['g_s_s']:.2f} ({cl:.2f}) | "
            f"{c['y_bytes']} / {w['y_bytes']} | {r['y_rate_change_vs_compressai_pct']:+.4f} | "
            f"{c['psnr_db']:.2f} / {w['psnr_db']:.2f} |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
