"""What one ``varicodec eval`` costs: seconds per image and rate point, by pass.

Runs the evaluation runner (real ``.vcd`` files through :mod:`varicodec.codec`,
metrics, FLOP pass, likelihood-estimate pass) for two hyperprior models on the
first Kodak images and reports the mean wall-clock time of each part:

* ``hyperprior-base``, one fixed-rate model per quality (as a fixed set is run);
* ``hyperprior-ecgbm``, one variable-rate gated model at the same qualities.

The models are **randomly initialised** at full size (N=128, M=192): cost does
not depend on training, except through the gates (how many channels run) and
the size of the streams the rANS coder writes. To make the gated model run its
sparse path like a trained one, its gate adjustment α starts at 1.0, which
gates off about half of the channels (the paper's target sparsity is ~0.5).
Rates and PSNRs of untrained models are meaningless and are not reported.

    nice -n 10 .venv/bin/python benchmarks/eval_cost.py --images 3 --quality 2,6 --threads 1,2

writes ``docs/results/eval_cost.json`` (raw results) and ``docs/results/eval_cost.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from varicodec.eval.results import environment, save_results
from varicodec.eval.runner import ModelSet, RatePoint, evaluate_models, list_images, parse_values
from varicodec.models import create_model
from varicodec.quality import quality_to_lmbda

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
PARTS = ("encode_s", "decode_s", "metrics_s", "flops_pass_s", "estimate_pass_s", "total_s")


def _builder(name: str, n: int, m: int, **kw):
    def load():
        torch.manual_seed(0)
        model = create_model(name, N=n, M=m, **kw).eval()
        model.update(force=True)
        return model
    return load


def _sets(qualities: list[float], n: int, m: int) -> list[ModelSet]:
    base = ModelSet("hyperprior-base (untrained)", [
        RatePoint(_builder("hyperprior-base", n, m, lmbda=quality_to_lmbda(q)), None,
                  {"quality": q}) for q in qualities], trained=False)
    vr_load = _builder("hyperprior-ecgbm", n, m, gate={"alpha_init": 1.0})
    cached = {}

    def vr():
        if "m" not in cached:
            cached["m"] = vr_load()
        return cached["m"]

    ecgbm = ModelSet("hyperprior-ecgbm (untrained, α=1)", [
        RatePoint(vr, quality_to_lmbda(q), {"quality": q}) for q in qualities], trained=False)
    return [base, ecgbm]


def _table(results: list[dict]) -> list[str]:
    lines = [
        "| model | threads | quality | encode s | decode s | metrics s | FLOP pass s "
        "| estimate pass s | total s | GFLOPs enc / dec | sparsity |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        threads = res["environment"]["torch_threads"]
        for p in res["points"]:
            mean = {k: float(np.mean([im[k] for im in p["images"]])) for k in PARTS}
            gf = f"{p['encoder_flops'] / 1e9:.1f} / {p['decoder_flops'] / 1e9:.1f}"
            sp = "—" if p.get("sparsity_mean") is None else f"{p['sparsity_mean']:.2f}"
            lines.append(
                f"| {res['label']} | {threads} | {p['setting']['quality']:g} | "
                f"{mean['encode_s']:.2f} | "
                f"{mean['decode_s']:.2f} | {mean['metrics_s']:.2f} | {mean['flops_pass_s']:.2f} | "
                f"{mean['estimate_pass_s']:.2f} | **{mean['total_s']:.2f}** | {gf} | {sp} |"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default=str(KODAK))
    ap.add_argument("--images", type=int, default=3, help="first K images")
    ap.add_argument("--quality", default="2,6", help="qualities to time (default 2,6)")
    ap.add_argument("--N", type=int, default=128)
    ap.add_argument("--M", type=int, default=192)
    ap.add_argument("--threads", default="1,2", help="torch thread counts to run (default 1,2)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "eval_cost"))
    args = ap.parse_args(argv)
    if not Path(args.dataset).is_dir():
        print(f"dataset not found at {args.dataset} (Kodak lives in ../shared/data/kodak)",
              file=sys.stderr)
        return 1
    images = list_images(args.dataset, args.images)
    qualities = parse_values(args.quality, "quality")
    results = []
    for threads in (int(t) for t in parse_values(args.threads, "threads")):
        torch.set_num_threads(threads)
        for s in _sets(qualities, args.N, args.M):
            results.append(evaluate_models(s, images, progress=sys.stderr.isatty(),
                                           dataset_dir=args.dataset, limit=args.images))
    env = environment()
    out = Path(args.out)
    save_results({"schema": "varicodec-eval-cost/1", "environment": env,
                  "results": results}, out.with_suffix(".json"))
    command = "nice -n 10 .venv/bin/python benchmarks/eval_cost.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    per_point = {f"{r['label']}, {r['environment']['torch_threads']} thread(s)":
                 float(np.mean([im["total_s"] for p in r["points"] for im in p["images"]]))
                 for r in results}
    lines = [
        "# Cost of `varicodec eval` (seconds per image per rate point)", "",
        f"Command: `{command.strip()}`", "",
        f"Machine: {env['cpu']} ({env['cpu_count']} cores, shared with other jobs; load "
        f"average {env['load_average']} at the end), torch {env['torch']}, commit "
        f"`{(env['git_commit'] or 'unknown')[:10]}`, {env['created']}.", "",
        f"Images: the first {len(images)} Kodak images (768×512). Models: N={args.N}, "
        f"M={args.M}, **randomly initialised** (cost only; the gated model starts with "
        "α=1 so about half of its channels are gated off). Each row is the mean over "
        "the images; `total` includes everything the runner does for one image and point.", "",
        *_table(results), "",
        "Parts: *encode/decode* — `varicodec.codec.encode`/`decode` (the timed, real "
        "files); *metrics* — PSNR and MS-SSIM; *FLOP pass* — `model.compress` + "
        "`model.decompress` under `FlopCounterMode`; *estimate pass* — `model.forward` "
        "for the likelihood rate. `--no-flops` and `--no-estimate` skip the last two.", "",
        "A full Kodak run (24 images × 8 rate points) at these speeds takes about " + "; ".join(
            f"{label}: {v * 24 * 8 / 60:.0f} min" for label, v in per_point.items()) + ".",
        "",
        "On a 2-core machine shared with other jobs, one thread is often faster than two: "
        "oversubscribed OpenMP threads wait for each other. Timings on a busy machine vary "
        "by 2–4× between identical runs; compare rows of one run only.", "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
