"""``varicodec train`` and ``varicodec export``."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model from a recipe (configs/*.yaml)",
                       description="Train a model from a YAML recipe. Runs under torchrun too.")
    p.add_argument("--config", required=True, help="recipe file, e.g. configs/hyperprior-bm.yaml")
    p.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    p.add_argument("--init", metavar="WEIGHTS|RUN|compressai:ARCH[:QUALITY]",
                   help="start from these weights: an exported .safetensors, a run folder, or "
                        "CompressAI's pretrained model (ARCH bmshj2018-hyperprior, "
                        "mbt2018-mean or mbt2018; QUALITY 1-8), e.g. "
                        "compressai:bmshj2018-hyperprior:8")
    p.add_argument("--name", help="override the recipe's run name")
    p.add_argument("--out-dir", help="override the recipe's output folder (default runs/)")
    p.add_argument("--steps", type=int, help="override the recipe's number of steps")
    p.add_argument("--threads", type=int, help="override the recipe's torch thread count")
    p.add_argument("--max-minutes", type=float,
                   help="stop cleanly (with a checkpoint) after this much wall-clock time")
    p.add_argument("--time-budget", type=float, metavar="MINUTES",
                   help="train for this much time, with the lr decays at fractions of it "
                        "(the recipe's time_budget_minutes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe key (VALUE read as YAML), e.g. --set amp=null")
    p.set_defaults(func=_train)

    e = sub.add_parser("export", help="write a run's weights + model card as safetensors")
    e.add_argument("run", help="run folder (runs/NAME) or checkpoint file")
    e.add_argument("--out", required=True, help="output NAME.safetensors")
    e.add_argument("--fp32", action="store_true", help="store float32 instead of float16")
    e.set_defaults(func=_export)

    w = sub.add_parser("widen", help="grow a trained model to more channels, same output",
                       description="Write a wider copy of a trained model (N, M channels) that "
                                   "reconstructs exactly as the original and codes the same "
                                   "bytes within a few, as the start of a training run at the "
                                   "wider size (hyperprior base and bm models).")
    w.add_argument("weights", help="the trained model (.safetensors)")
    w.add_argument("--N", type=int, required=True, help="channels of the transforms")
    w.add_argument("--M", type=int, required=True, help="latent channels")
    w.add_argument("--out", required=True, help="output NAME.safetensors")
    w.add_argument("--seed", type=int, default=0, help="seed of the new channels' weights")
    w.add_argument("--fp32", action="store_true", help="store float32 instead of float16")
    w.set_defaults(func=_widen)


def _train(args: argparse.Namespace) -> int:
    import yaml

    from .config import load_config
    from .loop import train

    extra = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = yaml.safe_load(value)
    cfg = load_config(args.config, set_values=extra, name=args.name, out_dir=args.out_dir,
                      steps=args.steps, threads=args.threads,
                      time_budget_minutes=args.time_budget)
    train(cfg, resume=args.resume, init=args.init, max_minutes=args.max_minutes)
    return 0


def _widen(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import VaricodecError
    from ..models import load_model, save_model
    from ..models.widen import widen_model, widened_card

    src, out = Path(args.weights), Path(args.out)
    if out.suffix != ".safetensors":
        raise VaricodecError(f"--out must end in .safetensors, got {out.name}")
    if out.exists() and out.resolve() == src.resolve():
        raise VaricodecError(f"--out is the input file {src}: choose another name")
    model = load_model(src)
    try:
        wide = widen_model(model, args.N, args.M, seed=args.seed)
    except ValueError as e:
        raise VaricodecError(str(e)) from None
    card = widened_card(model.card, model, args.N, args.M)
    save_model(wide, out, card, half=not args.fp32)
    out.with_name(out.name + ".json").write_text(json.dumps(card, indent=1) + "\n")
    print(f"wrote {out} ({wide.name}, N={args.N} M={args.M}, from N={model.config['N']} "
          f"M={model.config['M']}; {sum(p.numel() for p in wide.parameters()) / 1e6:.1f} M "
          "parameters)")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_run

    out, card = export_run(args.run, args.out, half=not args.fp32)
    print(f"wrote {out} ({card['name']}, {card['steps']} steps)")
    return 0
