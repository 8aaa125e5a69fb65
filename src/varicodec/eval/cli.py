"""``varicodec eval``, ``varicodec plot`` and ``varicodec table``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]

_EVAL_EPILOG = """\
examples:
  varicodec eval --model weights/hyperprior-ecgbm.safetensors --quality 1..8 kodak -o r.json
  varicodec eval --model ckpt/hyperprior-base@q1..8 kodak -o base.json   (fixed-rate set)
  varicodec eval --model a.safetensors --model b.safetensors kodak -o set.json
  varicodec eval --codec jpeg kodak -o jpeg.json
  varicodec eval --model hyperprior-ecgbm --quality 1..8 kodak -o bundled.json
    (a registry name means its bundled weights when there are some)
  varicodec eval --model hyperprior-ecgbm --untrained --N 16 --M 16 --limit 2 kodak -o smoke.json
    (an untrained model: for cost and smoke tests)
"""


def _add_reference(p: argparse.ArgumentParser) -> None:
    from ..models.registry import ARCHITECTURES

    p.add_argument("--reference", action="append", default=[], choices=list(ARCHITECTURES),
                   help="add CompressAI's published Kodak curve of this registry architecture")


def register(subparsers: argparse._SubParsersAction) -> None:
    from .classical import codec_names

    p = subparsers.add_parser(
        "eval", help="measure rate, distortion, time, FLOPs and sparsity on an image folder",
        description="Evaluate a model (or a fixed-rate set) or a classical codec on every "
                    "image of DATASET and write a results JSON file (schema: docs/eval.md).",
        epilog=_EVAL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("dataset", metavar="DATASET", nargs="?", help="folder of images")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", nargs="+", action="extend", metavar="SPEC",
                      help="weights file(s), registry name, or NAME@q1..8 (a fixed-rate set)")
    what.add_argument("--codec", choices=codec_names(), help="a classical codec")
    p.add_argument("--lmbda", action="append", metavar="LIST",
                   help="λ values of a variable-rate model, e.g. 0.0018,0.0067,0.025")
    p.add_argument("--quality", action="append", metavar="LIST",
                   help="qualities (1–8, continuous) of a variable-rate model, e.g. 1..8 "
                        "(default) or 1,2.5,4")
    p.add_argument("--sweep", action="append", metavar="LIST",
                   help="a classical codec's settings instead of its default sweep")
    p.add_argument("-o", "--output", required=True, help="results JSON file to write")
    p.add_argument("--limit", type=int, metavar="K", help="only the first K images")
    p.add_argument("--label", help="curve name in plots and tables")
    p.add_argument("--untrained", action="store_true",
                   help="build registry names as untrained models even if weights are bundled")
    p.add_argument("--N", type=int, help="channels N of untrained models")
    p.add_argument("--M", type=int, help="latent channels M of untrained models")
    p.add_argument("--no-flops", dest="flops", action="store_false",
                   help="skip the FLOP-counting pass")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip the likelihood (estimated rate) pass")
    p.add_argument("--refine", type=int, default=0, metavar="STEPS",
                   help="encode with latent refinement (varicodec encode --refine STEPS)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal; otherwise a line on stderr every "
                   "few seconds: done/total, rate, ETA)")
    p.set_defaults(func=_cmd_eval)

    p = subparsers.add_parser(
        "plot", help="RD curves, FLOPs and sparsity figures from results files",
        description="Draw rate–distortion (PSNR, MS-SSIM), FLOPs-vs-PSNR and per-layer "
                    "sparsity panels from results files.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("-o", "--output", required=True, help="figure file (.png, .pdf, .svg)")
    _add_reference(p)
    p.add_argument("--title", help="figure title")
    p.add_argument("--max-bpp", type=float, help="limit the rate axis of the RD panels")
    p.set_defaults(func=_cmd_plot)

    p = subparsers.add_parser(
        "table", help="the paper's tables (Markdown) from results files",
        description="BD-rates, PSNR drop, FLOP reduction, sparsity and storage saving as "
                    "Markdown tables.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("--anchor", metavar="LABEL", help="BD-rate anchor curve (default: jpeg)")
    _add_reference(p)
    p.add_argument("--matrix", action="store_true", help="also the BD-rate of every pair")
    p.add_argument("--points", action="store_true", help="also list every rate point")
    p.add_argument("-o", "--output", help="write the Markdown here instead of stdout")
    p.set_defaults(func=_cmd_table)

    p = subparsers.add_parser(
        "merge", help="join the evaluations of one model's (or fixed-rate set's) parts",
        description="Join results files of one fixed-rate set, or one variable-rate model, "
                    "evaluated in parts (e.g. qualities 1-5 and 6-8) into one results file: "
                    "one curve for `table` and `plot`; a set's files and bytes are added up, "
                    "a variable-rate model's parts must be the same weights.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS.json")
    p.add_argument("-o", "--output", required=True, help="results JSON file to write")
    p.add_argument("--label", help="curve name (default: the first part's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_merge)


def _cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from .runner import (
        VaricodecCoder,
        evaluate_codec,
        evaluate_models,
        list_images,
        model_set,
        parse_values,
    )

    dataset = args.dataset
    if dataset is None and args.model and len(args.model) > 1 and _not_a_model(args.model[-1]):
        dataset = args.model.pop()  # `--model a b DATASET`: the folder was swallowed
    if dataset is None:
        raise ValueError("give the DATASET folder (put it before --model, or after a single one)")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    if args.threads:
        torch.set_num_threads(args.threads)
    images = list_images(dataset, args.limit)
    progress = not args.quiet
    if args.codec:
        from .classical import get_codec

        if args.lmbda or args.quality or args.refine:
            raise ValueError("--lmbda/--quality/--refine are for models; a codec takes --sweep")
        codec = get_codec(args.codec)
        sweep = parse_values(args.sweep, f"{codec.setting}") if args.sweep else None
        results = evaluate_codec(codec, images, sweep, progress=progress, dataset_dir=dataset,
                                 limit=args.limit, label=args.label)
    else:
        if args.sweep:
            raise ValueError("--sweep is for classical codecs; a model takes --lmbda/--quality")
        config = {k: v for k, v in (("N", args.N), ("M", args.M)) if v}
        models = model_set(
            args.model,
            lmbdas=parse_values(args.lmbda, "lambda") if args.lmbda else None,
            qualities=parse_values(args.quality, "quality") if args.quality else None,
            config=config, label=args.label, untrained=args.untrained,
        )
        if not models.trained and not args.untrained:  # never a random model by accident
            print(f"varicodec: warning: {', '.join(args.model)}: no trained weights, so this "
                  "would evaluate a randomly initialised model", file=sys.stderr)
            raise ValueError("pass --untrained to evaluate untrained models on purpose")
        results = evaluate_models(models, images, VaricodecCoder(refine=args.refine),
                                  flops=args.flops, estimate=args.estimate,
                                  progress=progress, dataset_dir=dataset, limit=args.limit)
    from .results import save_results

    save_results(results, out)
    _print_summary(results)
    print(f"wrote {out}")
    return 0


def _not_a_model(token: str) -> bool:
    from ..models import list_models

    p = Path(token)
    return p.is_dir() or not (p.is_file() or token in list_models() or "@q" in token)


def _print_summary(results: dict) -> None:
    def f(v, fmt):
        return "   n/a" if v is None else format(v, fmt)

    print(f"{results['label']}: {results['dataset']['images']} images")
    print("  setting            bpp   bpp_est  PSNR dB  MS-SSIM   enc s   dec s  GFLOPs e/d")
    for p in results["points"]:
        setting = ",".join(f"{k}={v:g}" for k, v in p["setting"].items()) or f"λ={p['lmbda']:g}"
        gf = ("" if p.get("encoder_flops") is None else
              f"{p['encoder_flops'] / 1e9:.2f}/{p['decoder_flops'] / 1e9:.2f}")
        print(f"  {setting:<16} {f(p['bpp'], '6.4f')} {f(p.get('bpp_estimate'), '8.4f')} "
              f"{f(p['psnr_db'], '8.3f')} {f(p['ms_ssim'], '8.5f')} {f(p['encode_s'], '7.3f')} "
              f"{f(p['decode_s'], '7.3f')}  {gf}")


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_results
    from .results import load_results

    results = [load_results(p) for p in args.results]
    out = plot_results(results, args.output, references=args.reference, title=args.title,
                       max_bpp=args.max_bpp)
    print(f"wrote {out}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .results import load_results, merge_results, save_results

    out = Path(args.output)
    if any(out.resolve() == Path(p).resolve() for p in args.results):
        raise FileExistsError(f"refusing to overwrite the input {out}")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists (use --force to overwrite)")
    merged = merge_results([load_results(p) for p in args.results], label=args.label)
    save_results(merged, out)
    print(f"wrote {out} ({len(merged['points'])} points, {merged['model']['models']} models)")
    return 0


def _cmd_table(args: argparse.Namespace) -> int:
    from .reference import reference_results
    from .results import load_results
    from .table import make_tables

    results = [load_results(p) for p in args.results]
    results += [reference_results(a) for a in args.reference]
    text = make_tables(results, anchor=args.anchor, points=args.points, matrix=args.matrix)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0
