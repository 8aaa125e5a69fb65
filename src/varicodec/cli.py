"""``varicodec`` command line: one entry point, one subcommand per job.

Each subsystem owns its subcommands in its own module and exposes
``register(subparsers)``; every subcommand handler returns an exit code. Errors
meant for users (``ValueError``, ``FileNotFoundError``, ``FileExistsError``,
:class:`varicodec.errors.VaricodecError`) become one line on stderr and a
non-zero exit, never a traceback; Ctrl-C at any moment prints one line and
exits 130.

Start-up is kept light: building the parser imports no torch (the subcommand
modules import their heavy dependencies inside their handlers), so ``--help``,
``--version``, ``models`` and ``info`` start in a fraction of a second
(``benchmarks/startup.py``, ``docs/results/startup.md``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VaricodecError

#: modules that add subcommands (looked up lazily so `--help` stays fast)
SUBCOMMAND_MODULES = (
    "varicodec.demo",
    "varicodec.codec.cli",
    "varicodec.train.cli",
    "varicodec.eval.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="varicodec",
        description="Variable-rate, channel-gated learned image compression.",
    )
    parser.add_argument("--version", action="version", version=f"varicodec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser(
        "models", help="list the registry's model names and which have bundled weights",
        description="List the twelve registry names; names with trained weights bundled in "
        "the package are marked, with the file and the recipe they come from. Those names "
        "work as --model NAME and in load_model(NAME).")
    models.set_defaults(func=_cmd_models)
    for name in SUBCOMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:  # a subsystem not installed in this build
            if e.name is None or not name.startswith(e.name):
                raise
            continue
        mod.register(sub)
    return parser


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.io import describe_bundled
    from .models.registry import list_models

    names = list_models()
    width = max(len(n) for n in names)
    for name in names:
        where = describe_bundled(name)
        print(f"{name:<{width}}  bundled: {where}" if where else name)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # anywhere: parsing, importing torch, coding, writing
        print("varicodec: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except (VaricodecError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"varicodec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
