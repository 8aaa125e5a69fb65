"""``varicodec`` command line: one entry point, one subcommand per job.

Each subsystem owns its subcommands in its own module and exposes
``register(subparsers)``; every subcommand handler returns an exit code. Errors
meant for users (``ValueError``, ``OSError`` such as a missing file or a full
disk, ``MemoryError``, :class:`varicodec.errors.VaricodecError`) become one
line on stderr and a non-zero exit, never a traceback; Ctrl-C at any moment
prints one line and exits 130.

Start-up is kept light: building the parser imports no torch (the subcommand
modules import their heavy dependencies inside their handlers), so ``--help``,
``--version``, ``models`` and ``info`` start in a fraction of a second
(``benchmarks/startup.py``, ``docs/results/startup.md``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from types import FrameType

from .errors import VaricodecError
from .util import remove_unfinished_writes

#: modules that add subcommands (looked up lazily so `--help` stays fast)
SUBCOMMAND_MODULES = (
    "varicodec.demo",
    "varicodec.codec.cli",
    "varicodec.train.cli",
    "varicodec.eval.cli",
    "varicodec.serve.cli",
)


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line (``varicodec encode: error: … (see --help)``)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="varicodec",
        description="Variable-rate, channel-gated learned image compression.",
    )
    parser.add_argument("--version", action="version", version=f"varicodec {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    models = sub.add_parser(
        "models", help="list the registry's model names and which have bundled weights",
        description="List the registry names ({architecture}-{variant}); names with trained "
        "weights bundled in "
        "the package are marked, with the file and the recipe they come from. Those names "
        "work as --model NAME and in load_model(NAME).")
    models.set_defaults(func=_cmd_models, fast_exit=True)
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
    """Run the command line; ``argv`` ``None`` means ``sys.argv`` (a real process)."""
    if argv is None and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_interrupt)  # not where SIGINT is ignored (`cmd &`)
    try:
        code, args = _main(argv)
    except KeyboardInterrupt:  # anywhere: parsing, importing torch, coding, writing
        print("varicodec: interrupted", file=sys.stderr)
        if argv is None:
            # a real process: outputs were cleaned up on the way here; end it now, since
            # the teardown of a half-imported torch can die of the same SIGINT (exit −2)
            _exit_now(130)
        return 130
    if argv is None and getattr(args, "fast_exit", False):
        _exit_now(code)
    return code


def _on_interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C in a real process: ``KeyboardInterrupt``, except during an import.

    Raised inside an import, ``KeyboardInterrupt`` can cross torch's C++ code
    (``torch._C._autograd_init``, ``_c10d_init``: pybind11), which cannot pass it on
    and aborts the process (exit −6, "terminate called after throwing an instance of
    'pybind11::error_already_set'"), or it lands in one of importlib's callbacks,
    which swallows it and lets the command run on to exit 0. Without this handler 6
    of 400 Ctrl-Cs sent while torch loaded aborted, with it none of 400
    (``benchmarks/interrupt.py``, docs/results/startup.md). An import leaves nothing
    to clean up but the temporary files of writes in progress, so there the command
    ends at once.
    """
    if _inside_import(frame):
        remove_unfinished_writes()
        print("varicodec: interrupted", file=sys.stderr)
        _exit_now(130)
        os._exit(130)  # stderr is closed: end all the same
    raise KeyboardInterrupt


#: the modules of importlib's machinery (frozen into the interpreter, or not)
_IMPORTLIB = ("_frozen_importlib", "importlib._bootstrap")


def _inside_import(frame: FrameType | None) -> bool:
    """``frame`` or one of its callers runs importlib's machinery."""
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(_IMPORTLIB):
            return True
        frame = frame.f_back
    return False


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown.

    Unloading torch's modules takes ~0.5 s at exit, a quarter of a one-image
    encode. Commands that set ``fast_exit`` have closed and moved every output
    into place and hold no worker processes or threads, so once the standard
    streams are flushed there is nothing left to clean up.
    """
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # the reader of our output left: end as _run does
        _silence_stdout()
        os._exit(141)
    except (OSError, ValueError):  # another failure: let the normal exit report it
        return
    os._exit(code)


def _main(argv: list[str] | None) -> tuple[int, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0, args
    if argv is None:  # a command runs in a process of ours: let malloc reuse activations
        from .util import retain_freed_memory

        retain_freed_memory()
    return _run(args), args


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader of our output left (`varicodec demo | head -3`)
        _silence_stdout()
        return 141  # as a shell reports a command ended by SIGPIPE; nothing to say
    except (VaricodecError, ValueError, OSError) as e:  # OSError: missing, exists, disk full…
        print(f"varicodec: error: {e}", file=sys.stderr)
        return 2
    except MemoryError:
        print("varicodec: error: out of memory", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point standard output at the null device, so that the interpreter's last flush
    of what is still buffered for a closed pipe raises nothing."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):  # no real stdout (captured in tests)
        pass


if __name__ == "__main__":
    sys.exit(main())
