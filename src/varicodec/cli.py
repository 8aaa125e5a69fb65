"""``varicodec`` command line: one entry point, one subcommand per job.

Each subsystem owns its subcommands in its own module and exposes
``register(subparsers)``; every subcommand handler returns an exit code. Errors
meant for users (``ValueError``, ``FileNotFoundError``, ``FileExistsError``,
:class:`varicodec.errors.VaricodecError`) become one line on stderr and a
non-zero exit, never a traceback.
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
    models = sub.add_parser("models", help="list the registry's model names")
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
    from .models import list_models

    print("\n".join(list_models()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("varicodec: interrupted", file=sys.stderr)
        return 130
    except (VaricodecError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError) as e:
        print(f"varicodec: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
