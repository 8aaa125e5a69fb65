"""What the paper's table needs that no training can change: model sizes and dense FLOPs.

For ScaleHyperprior (``hyperprior``), MeanScaleHyperprior (``mean``) and
JointAutoregressiveHierarchicalPriors (``joint``) this builds our registry models at
CompressAI's per-quality widths (``registry.widths``, CompressAI's ``zoo.image.cfgs``) and
at the universal width N=192/M=320, freshly initialised (counts and dense FLOPs do not
depend on the weights), and measures

1. **storage**: parameters of each fixed-rate model and of the universal ``bm`` / ``ecgbm``
   model, split into the CompressAI network, its entropy bottleneck (the factorised prior
   of z), our modulators and our gates; the entropy coder's tables (buffers after
   ``update()``); the bytes of the fp16 ``.safetensors`` file ``save_model`` writes. From
   these, the storage saving ``1 − one universal / eight fixed`` under each convention, next
   to the poster's 80.42 / 82.04 / 83.07 %;
2. **dense FLOPs** of ``compress`` and ``decompress`` on one Kodak image (768×512), counted
   by the project's counter (:func:`varicodec.eval.flops.count_flops`, 2 FLOPs per
   multiply-add, GDN included), per width — the denominators of the ECG FLOP-reduction
   rows — and the share of them that sits in convolutions whose input a gate can thin out
   (the layers ``insert_gates`` gates; the joint model's context and entropy-parameter
   networks stay dense). From that share: the largest FLOP reduction any sparsity ``s``
   of the gated inputs can give, ``total / (total − s · gateable)``;
3. the forward FLOPs of one 256² training crop per width, the relative cost of a
   training step used to scale the measured H100 speed to the other architectures;
4. from those, an **estimate** of the H100 time of each architecture's grid as
   ``scripts/paper_grid.sh`` runs it (its configs' steps, at the GPU batch of 32 256² crops):
   28.6 steps/s measured for hyperprior-bm N=128/M=192 (../shared/SPEC.md, "Compute
   reality"), scaled by the training FLOPs of each width, × 17.2/28.6 for gated models
   (hyperprior-ecgbm in the same loop, ../shared/weights/README.md), plus 45 s of start-up
   per job (configs/gpu/queue.yaml's default); also with every step count × 10 and × 100.

Run (about 2 minutes on 2 cores)::

    .venv/bin/python benchmarks/paper_counts.py --json docs/results/paper/counts.json
    # only item 4 again, from the measured counts:
    .venv/bin/python benchmarks/paper_counts.py --from-json docs/results/paper/counts.json \
        --json docs/results/paper/counts.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from varicodec.eval.flops import count_flops
from varicodec.imageio import load_rgb, pad_to_multiple, to_tensor
from varicodec.models import ARCHITECTURES, create_model, parse_name, save_model
from varicodec.quality import QUALITY_LMBDAS
from varicodec.train import load_config

ROOT = Path(__file__).resolve().parents[1]
KODAK = ROOT.parent / "shared" / "data" / "kodak"
ARCHS = ("hyperprior", "mean", "joint")
UNIVERSAL = (192, 320)
#: the poster's storage savings (section 3, "Storage saving of 80.42%, 82.04% and 83.07%")
POSTER_SAVING = {"hyperprior": 80.42, "mean": 82.04, "joint": 83.07}
#: issue 12's text gives mean-scale CompressAI's hyperprior widths (N=128/M=192 at q1-5);
#: CompressAI's own table (and our registry) has them at q1-4. Both are counted.
ISSUE_WIDTHS = {"mean": ((128, 192),) * 5 + ((192, 320),) * 3}
#: H100, batch 32 of 256² crops: hyperprior-bm N=128/M=192 (SPEC "Compute reality"), and the
#: ratio of hyperprior-ecgbm to it in the same unchanged loop (../shared/weights/README.md)
H100_STEPS_PER_S = 28.6
H100_GATED_FACTOR = 17.2 / 28.6
JOB_OVERHEAD_S = 45.0


def _numel(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _buffers(model: nn.Module) -> int:
    params = {k for k, _ in model.named_parameters()}
    return sum(v.numel() for k, v in model.state_dict().items() if k not in params)


def sizes(arch: str, variant: str, N: int, M: int) -> dict:
    """Parameter counts (split by part), table sizes and fp16 file bytes of one model."""
    torch.manual_seed(0)
    model = create_model(f"{arch}-{variant}", N=N, M=M).eval()
    net = model.net
    gates = sum(g.numel() for n, g in model.named_parameters() if ".gate." in n)
    out = {
        "model": model.name, "N": N, "M": M,
        "parameters": _numel(model),
        "compressai_net": _numel(net) - gates,
        "entropy_bottleneck": _numel(net.entropy_bottleneck),
        "modulators": _numel(getattr(model, "modulator", None))
        + _numel(getattr(model, "demodulator", None)),
        "gates": gates,
    }
    model.update(force=True)
    out["state_elements"] = out["parameters"] + _buffers(model)  # + coder tables, GDN pedestals
    out["tables_elements"] = _buffers(model)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "m.safetensors")
        out["fp16_bytes"] = path.stat().st_size
    return out


def _conv_flops(module: nn.Module, shape: torch.Size) -> int:
    with torch.no_grad():
        return count_flops(module, torch.zeros(shape))[1]


def dense_flops(arch: str, N: int, M: int, x: torch.Tensor) -> dict:
    """Dense encoder / decoder FLOPs of the fixed-rate model on ``x``, and the part of them
    in the convolutions the ``ecg`` variant gates."""
    torch.manual_seed(0)
    gated = create_model(f"{arch}-ecg", N=N, M=M).gated_layers
    model = create_model(f"{arch}-base", N=N, M=M).eval()
    model.update(force=True)
    inputs: dict[str, list[torch.Size]] = {name: [] for name in gated}
    hooks = [model.net.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: inputs[name].append(args[0].shape)) for name in gated]
    x = pad_to_multiple(x, model.downsampling_factor)
    t0 = time.perf_counter()
    with torch.no_grad():
        enc, enc_flops = count_flops(model.compress, x)
        enc_shapes = {k: list(v) for k, v in inputs.items()}
        for v in inputs.values():
            v.clear()
        _, dec_flops = count_flops(model.decompress, enc["strings"], enc["shape"])
        dec_shapes = {k: list(v) for k, v in inputs.items()}
    seconds = time.perf_counter() - t0
    for h in hooks:
        h.remove()

    def gateable(shapes: dict[str, list[torch.Size]]) -> dict[str, int]:
        return {name: sum(_conv_flops(model.net.get_submodule(name), s) for s in ss)
                for name, ss in shapes.items() if ss}

    g_enc, g_dec = gateable(enc_shapes), gateable(dec_shapes)
    out = {"N": N, "M": M, "encoder_flops": enc_flops, "decoder_flops": dec_flops,
           "gateable_encoder_flops": sum(g_enc.values()),
           "gateable_decoder_flops": sum(g_dec.values()),
           "gated_layers": gated, "gateable_by_layer": {"encoder": g_enc, "decoder": g_dec},
           "seconds": seconds}
    total = enc_flops + dec_flops
    gate_total = out["gateable_encoder_flops"] + out["gateable_decoder_flops"]
    out["gateable_share"] = gate_total / total
    out["ceiling"] = {f"{s:g}": total / (total - s * gate_total) for s in (0.5, 0.55, 1.0)}
    out["ceiling_encoder"] = {f"{s:g}": enc_flops / (enc_flops - s * out["gateable_encoder_flops"])
                              for s in (0.5, 0.55, 1.0)}
    out["ceiling_decoder"] = {f"{s:g}": dec_flops / (dec_flops - s * out["gateable_decoder_flops"])
                              for s in (0.5, 0.55, 1.0)}
    # uniform sparsity of the gated inputs that a FLOP reduction R needs: (1 - 1/R) / share
    out["sparsity_needed"] = {f"{r:g}": (1 - 1 / r) / out["gateable_share"]
                              for r in (2.0, 2.5, 2.86)}
    return out


def train_forward_flops(arch: str, N: int, M: int, crop: int = 256) -> int:
    """Forward FLOPs of the training pass on one ``crop``² image (variable-rate model)."""
    torch.manual_seed(0)
    model = create_model(f"{arch}-bm", N=N, M=M).train()
    with torch.no_grad():
        return count_flops(model, torch.rand(1, 3, crop, crop), 0.013)[1]


def savings(arch: str, fixed: list[dict], universal: dict) -> dict:
    """``1 − universal / Σ fixed`` in % under each convention of counting a model."""
    def pct(key_u: str, key_f: str) -> float:
        return 100 * (1 - universal[key_u] / sum(f[key_f] for f in fixed))

    ecgbm = universal
    return {
        "compressai_parameters": pct("compressai_net", "compressai_net"),
        "compressai_parameters_without_entropy_bottleneck": 100 * (1 - (
            ecgbm["compressai_net"] - ecgbm["entropy_bottleneck"]) / sum(
            f["compressai_net"] - f["entropy_bottleneck"] for f in fixed)),
        "ours_parameters_with_modulators_and_gates": pct("parameters", "parameters"),
        "ours_state_elements_with_tables": pct("state_elements", "state_elements"),
        "ours_fp16_bytes": pct("fp16_bytes", "fp16_bytes"),
        "poster": POSTER_SAVING[arch],
        # the universal model's size that the poster's figure implies, if its eight fixed
        # models are CompressAI's parameter counts at these widths, and its excess over
        # the plain CompressAI network at N=192/M=320
        "poster_implied_universal_parameters": (implied := (1 - POSTER_SAVING[arch] / 100)
                                                * sum(f["compressai_net"] for f in fixed)),
        "poster_implied_extra_parameters": implied - universal["compressai_net"],
    }


def grid_models(arch: str) -> list[Path]:
    """The configs ``scripts/paper_grid.sh`` trains for ``arch`` (its default stages, and
    for hyperprior its pre-training too), read from the script's dry run."""
    stages = ["pre", "bm", "base", "ecg", "extra", "ecgbm"]
    if arch == "hyperprior":
        stages.append("ablation")  # issue 7's grid; "hyperprior-paper" is issue 12's
    env = {**os.environ, "ARCH": arch, "DRY_RUN": "1"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), *stages], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [ROOT / line.split(" -> ")[0] for line in out.splitlines()]


def grid_time(arch: str, train_flops: dict[str, dict[str, int]]) -> dict:
    """Estimated H100 time of ``arch``'s grid (item 4 of the module docstring)."""
    ref = train_flops["hyperprior"]["128x192"]
    jobs, seconds, steps = [], 0.0, 0
    for path in grid_models(arch):
        cfg = load_config(path)
        registry_arch, variant = parse_name(cfg.model)
        gated = variant in ("ecg", "ecgbm")
        width = f"{cfg.N}x{cfg.M}"
        rate = H100_STEPS_PER_S * ref / train_flops[registry_arch][width]
        rate *= H100_GATED_FACTOR if gated else 1.0
        jobs.append({"config": str(path.relative_to(ROOT)), "steps": cfg.steps,
                     "width": width, "steps_per_s": rate})
        seconds += cfg.steps / rate
        steps += cfg.steps
    overhead = JOB_OVERHEAD_S * len(jobs)
    return {"jobs": jobs, "models": len(jobs), "steps": steps,
            "minutes": {f"x{k}": (k * seconds + overhead) / 60 for k in (1, 10, 100)},
            "training_minutes_x1": seconds / 60, "overhead_minutes": overhead / 60,
            "assumptions": {"steps_per_s_hyperprior_128x192": H100_STEPS_PER_S,
                            "gated_factor": H100_GATED_FACTOR,
                            "job_overhead_s": JOB_OVERHEAD_S,
                            "batch": "32 crops of 256² (TRAIN_ARGS='--set batch_size=32 "
                                     "--set crop=256')"}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, default=KODAK / "kodim01.png",
                   help="a 768×512 Kodak image for the FLOP count")
    p.add_argument("--arch", default=",".join(ARCHS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--from-json", type=Path, default=None,
                   help="take the measured counts from this file; only redo the estimate")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.from_json:
        report = json.loads(args.from_json.read_text())
        return finish(report, args.json)
    if not args.image.is_file():
        print(f"no image {args.image}: the FLOP count needs a Kodak image "
              "(../shared/data/kodak)", file=sys.stderr)
        return 2
    x = to_tensor(load_rgb(args.image))
    report: dict = {"image": str(args.image.name), "image_size": list(x.shape[-2:]),
                    "flops_convention": "2 FLOPs per multiply-add; GDN counted; rANS not",
                    "torch": torch.__version__, "architectures": {}}
    for arch in args.arch.split(","):
        entry = ARCHITECTURES[arch]
        widths = {f"{n}x{m}": (n, m) for n, m in entry.widths[:8]}
        widths.setdefault("192x320", UNIVERSAL)
        base = {k: sizes(arch, "base", n, m) for k, (n, m) in widths.items()}
        univ = {v: sizes(arch, v, *UNIVERSAL) for v in ("bm", "ecgbm")}
        fixed = [base[f"{n}x{m}"] for n, m in entry.widths[:8]]
        a = {"compressai_name": entry.compressai_name,
             "qualities": {str(q + 1): {"N": n, "M": m, "lmbda": QUALITY_LMBDAS[q]}
                           for q, (n, m) in enumerate(entry.widths[:8])},
             "fixed_rate_models": base, "universal": univ,
             "eight_fixed": {k: sum(f[k] for f in fixed) for k in
                             ("parameters", "compressai_net", "entropy_bottleneck",
                              "state_elements", "fp16_bytes")},
             "saving_percent": {v: savings(arch, fixed, univ[v]) for v in ("bm", "ecgbm")}}
        if arch in ISSUE_WIDTHS:
            alt = [base[f"{n}x{m}"] for n, m in ISSUE_WIDTHS[arch]]
            a["saving_percent_issue_widths"] = {
                "widths": [list(w) for w in ISSUE_WIDTHS[arch]],
                **{v: savings(arch, alt, univ[v]) for v in ("bm", "ecgbm")}}
        a["dense_flops"] = {k: dense_flops(arch, n, m, x) for k, (n, m) in widths.items()}
        a["train_forward_flops_256"] = {k: train_forward_flops(arch, n, m)
                                        for k, (n, m) in widths.items()}
        report["architectures"][arch] = a
        s = a["saving_percent"]["ecgbm"]
        print(f"{arch}: 8 fixed {a['eight_fixed']['compressai_net'] / 1e6:.2f} M, universal "
              f"{univ['ecgbm']['compressai_net'] / 1e6:.2f} M (+{univ['ecgbm']['modulators']} "
              f"modulator, +{univ['ecgbm']['gates']} gates): saving CompressAI "
              f"{s['compressai_parameters']:.2f} %, "
              f"ours {s['ours_parameters_with_modulators_and_gates']:.2f} %, "
              f"fp16 {s['ours_fp16_bytes']:.2f} % (poster {s['poster']})")
        for k, d in a["dense_flops"].items():
            print(f"  {k}: enc {d['encoder_flops'] / 1e9:.2f} G, "
                  f"dec {d['decoder_flops'] / 1e9:.2f} G, "
                  f"gateable {d['gateable_share'] * 100:.1f} %, ceiling at s=0.5 "
                  f"{d['ceiling']['0.5']:.2f}x, train fwd 256² "
                  f"{a['train_forward_flops_256'][k] / 1e9:.2f} G")
    return finish(report, args.json)


def finish(report: dict, path: Path | None) -> int:
    """Add the H100 estimate of each grid (when hyperprior was measured), print, write."""
    archs = report["architectures"]
    if "hyperprior" in archs:
        flops = {a: v["train_forward_flops_256"] for a, v in archs.items()}
        for arch, a in archs.items():
            a["grid_h100_estimate"] = g = grid_time(arch, flops)
            print(f"{arch} grid: {g['models']} models, {g['steps']} steps, H100 estimate "
                  + ", ".join(f"{k} {v:.0f} min" for k, v in g["minutes"].items()))
            if arch == "hyperprior":  # issue 12's hyperprior grid, at the paper's widths
                a["grid_h100_estimate_paper_widths"] = g = grid_time("hyperprior-paper", flops)
                print(f"hyperprior-paper grid: {g['models']} models, {g['steps']} steps, H100 "
                      "estimate " + ", ".join(f"{k} {v:.0f} min" for k, v in g["minutes"].items()))
    text = json.dumps(report, indent=1) + "\n"
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
