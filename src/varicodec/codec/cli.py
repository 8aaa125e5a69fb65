"""``varicodec encode | decode | info``.

Default names: ``photo.png`` → ``photo.vcd`` → ``photo.vcd.png``. A folder
as input codes every image (or every ``.vcd``) in it, not recursively, into
``-o OUTDIR`` (created if its parent exists; default: beside the inputs).
Outputs are written to a temporary file in the target folder and moved into
place, so a failure never leaves a partial file; an existing output is
refused unless ``--force``, and an input is never overwritten.

``-`` as the input reads one image (or ``.vcd`` file) from standard input, as
``-o`` writes the output to standard output (the summary line then goes to
stderr): ``cat photo.jpg | varicodec encode - -o - > photo.vcd``.

Exit codes: 0 done; 2 an error (one line on stderr per file, naming it);
3 ``encode --strict`` missed a ``--bpp``/``--psnr`` target by more than the
tolerance (no file written); 130 interrupted. ``--json`` prints one JSON
object per file on stdout instead of the summary line. A folder shows progress
on stderr (a bar on a terminal, a line every few seconds otherwise) unless
``--quiet``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from ..errors import FormatError, VaricodecError, VaricodecWarning
from ..imageio import open_image, save_image
from ..util import IMAGE_SUFFIXES, atomic_write, list_images
from .format import MAGIC

SUFFIX = ".vcd"
DECODED_SUFFIX = ".png"
#: the input or output name that means standard input / standard output
STDIO = "-"


def register(sub: argparse._SubParsersAction) -> None:
    enc = sub.add_parser(
        "encode", help="compress an image (or a folder of images) to .vcd",
        description="Compress an image to a .vcd file. Without a rate option a variable-rate "
        "model codes at quality 5.",
    )
    enc.add_argument("input", help="image file or folder of images; - reads standard input")
    enc.add_argument("-o", "--output", help="output file or folder (default: IN with .vcd); "
                     "- writes standard output")
    enc.add_argument("--model", help="registry name or .safetensors path "
                     "(default: bundled hyperprior-ecgbm)")
    rate = enc.add_mutually_exclusive_group()
    rate.add_argument("--lmbda", type=float, help="trade-off factor lambda (model's range)")
    rate.add_argument("--quality", type=float, help="continuous quality 1..8")
    rate.add_argument("--bpp", type=float, help="target bits per pixel (rate control)")
    rate.add_argument("--psnr", type=float, help="target PSNR in dB (rate control)")
    enc.add_argument("--tolerance", type=float,
                     help="rate-control tolerance: relative for --bpp, in (0, 1) (default "
                     "0.02), dB for --psnr, > 0 (default 0.1)")
    enc.add_argument("--tile", default="auto", type=_tile_arg,
                     help="code as independent tiles of this side in pixels (>= 64) for "
                     "bounded memory; 0: never; auto (default): 992 above 4 megapixels")
    enc.add_argument("--refine", type=int, default=0, metavar="STEPS",
                     help="slower, smaller files: tune this image's latents for STEPS "
                     "gradient steps before coding (e.g. 50; about 0.8 s per step for a "
                     "Kodak image on 2 cores; not with --bpp/--psnr or joint models); the "
                     "decoder is unchanged (default 0: off)")
    enc.add_argument("--no-icc", dest="keep_icc", action="store_false",
                     help="drop the image's ICC colour profile (its colours are then read as "
                     "sRGB); by default a profile other than sRGB is carried in the file")
    enc.add_argument("--strict", action="store_true",
                     help="a --bpp/--psnr target missed by more than the tolerance is an error: "
                     "no file, exit 3 (default: write the closest result and warn on stderr)")
    _common(enc)
    enc.set_defaults(func=_cmd_encode, fast_exit=True)

    dec = sub.add_parser(
        "decode", help="decompress a .vcd file (or a folder of them)",
        description="Decompress a .vcd file to an image (PNG unless -o names another "
        "extension). The weights are the bundled ones the file names unless --model is "
        "given; other weights are refused (the file records a fingerprint).")
    dec.add_argument("input", help=".vcd file or folder of .vcd files; - reads standard input")
    dec.add_argument("-o", "--output", help="output image or folder (default: IN.png); the "
                     "extension picks the format; - writes PNG to standard output")
    dec.add_argument("--model", help="registry name or .safetensors path "
                     "(default: the bundled weights named in the file)")
    _common(dec)
    dec.set_defaults(func=_cmd_decode, fast_exit=True)

    inf = sub.add_parser("info", help="show a .vcd file's header")
    inf.add_argument("input", help=".vcd file; - reads standard input")
    inf.add_argument("--model", help="weights whose lambda range turns the code into lambda")
    inf.add_argument("--json", action="store_true", help="print JSON")
    inf.set_defaults(func=_cmd_info, fast_exit=True)


def _tile_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'auto', 0 or a size in pixels, not {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per file on stdout instead of the summary line")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines for a folder (errors and warnings still go to stderr)")


# ------------------------------------------------------------------ files
def write_atomic(path: Path, write: Callable[[io.BufferedWriter], None], force: bool) -> None:
    """Write ``path`` via a temporary file in its folder and ``os.replace``."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists (use --force to overwrite)")

    def to_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    atomic_write(path, to_file)


def _is_stdio(path: Path) -> bool:
    return str(path) == STDIO


def _shown(path: Path, stream: str = "input") -> str:
    """How messages name a file: its path, or ``standard input`` / ``standard output``."""
    return f"standard {stream}" if _is_stdio(path) else str(path)


def _emit(out: Path, write: Callable[[io.BufferedWriter], None], force: bool) -> None:
    """Write an output file atomically, or (``-``) to standard output in one piece:
    ``write`` fills a buffer first, so a failure writes nothing."""
    if not _is_stdio(out):
        write_atomic(out, write, force)
        return
    buf = io.BytesIO()
    write(buf)
    sys.stdout.flush()
    sys.stdout.buffer.write(buf.getvalue())
    sys.stdout.buffer.flush()


def _stdin_bytes() -> bytes:
    if sys.stdin is None or sys.stdin.isatty():
        raise VaricodecError("- reads standard input, which is a terminal here: pipe a file in")
    return sys.stdin.buffer.read()


def _check_output(src: Path, out: Path, force: bool) -> None:
    if _is_stdio(out):
        return
    if not out.parent.is_dir():
        raise FileNotFoundError(f"output folder {out.parent} does not exist")
    if out.is_dir():
        raise IsADirectoryError(f"output {out} is a folder")
    if out.exists():
        if src.exists() and os.path.samefile(src, out):
            raise FileExistsError(f"refusing to overwrite the input {src}")
        if not force:
            raise FileExistsError(f"{out} exists (use --force to overwrite)")


def _check_magic(head: bytes, path: Path) -> None:
    """A file that starts otherwise than a ``.vcd`` is refused before it is read whole."""
    if not head or not MAGIC.startswith(head[:len(MAGIC)]):
        raise FormatError(f"{_shown(path)}: not a varicodec file (bad magic; expected 'VCD')")


def _read_vcd(path: Path) -> bytes:
    if _is_stdio(path):
        data = _stdin_bytes()
        _check_magic(data, path)
        return data
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a .vcd file")
    with open(path, "rb") as f:
        head = f.read(len(MAGIC))
        _check_magic(head, path)
        return head + f.read()


def _default_output(src: Path, decode: bool) -> Path:
    return src.with_name(src.name + DECODED_SUFFIX) if decode else src.with_suffix(SUFFIX)


def _resolve_output(src: Path, output: str | None, decode: bool) -> Path:
    if output is None:
        if _is_stdio(src):
            raise VaricodecError("reading standard input: name the output with -o FILE "
                                 "(or -o - for standard output)")
        return _default_output(src, decode)
    if output == STDIO:
        return Path(STDIO)
    out = Path(output)
    if out.is_dir():  # a folder as -o for one file: keep the default name, inside it
        return out / _default_output(src, decode).name
    return out


# --------------------------------------------------------------- reporting
@contextlib.contextmanager
def _warnings_reported(path: Path, categories: tuple[type[Warning], ...] = (VaricodecWarning,)
                       ) -> Iterator[None]:
    """The warnings of ``categories`` raised inside the block, each printed after it as
    one line on stderr naming ``path``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        if issubclass(w.category, categories):
            print(f"varicodec: warning: {_naming(path, Exception(str(w.message)))}",
                  file=sys.stderr)


def _fmt_db(v: float | None) -> str:
    if v is None:
        return ""
    return "  inf dB" if math.isinf(v) else f"  {v:.2f} dB"


# --------------------------------------------------------------- commands
class _Failed(Exception):
    """One file failed: ``message`` names it; ``code`` is the exit status it asks for."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _naming(path: Path, e: BaseException) -> str:
    """``e``'s message, starting with ``path`` exactly once."""
    text = str(e)
    if _is_stdio(path):
        name = _shown(path)
        return text if text.startswith(name) else f"{name}: {text}"
    if isinstance(e, OSError) and e.strerror and not e.filename and str(path) not in text:
        text = e.strerror
    return text if str(path) in text or path.name in text else f"{path}: {text}"


def _encode_one(src: Path, out: Path, args: argparse.Namespace) -> tuple[str, dict]:
    from .api import encode_image

    _check_output(src, out, args.force)
    with _warnings_reported(src, (VaricodecWarning, Image.DecompressionBombWarning)):
        image = open_image(_stdin_bytes(), name="standard input") if _is_stdio(src) else src
        r = encode_image(image, args.model, lmbda=args.lmbda, quality=args.quality, bpp=args.bpp,
                         psnr=args.psnr, tolerance=args.tolerance, strict=args.strict,
                         tile=args.tile, refine=args.refine, progress=not args.quiet,
                         keep_icc=args.keep_icc)
    _emit(out, lambda f: f.write(r.data), args.force)
    rc = r.rate_control
    if rc is not None and not rc.converged:
        print(f"varicodec: warning: {_shown(src)}: target missed: "
              f"{rc.summary().removeprefix('rate control: ')} (--strict makes this an error)",
              file=sys.stderr)
    lm = f"  lambda {r.lmbda:.5g}" + (f" (code {r.lmbda_code})" if r.lmbda_code is not None else "")
    line = (f"{_shown(src)} -> {_shown(out, 'output')}  {r.width}x{r.height} {r.mode}  "
            f"{len(r.data)} B  "
            f"{r.bpp:.4f} bpp{_fmt_db(r.psnr_db)}{lm}  {r.seconds:.2f} s"
            + (f"  (refined, {args.refine} steps)" if args.refine else "")
            + (f"  ICC profile {r.icc_bytes} B" if r.icc_bytes else ""))
    if rc is not None:
        line += "\n  " + rc.summary()
    record = {
        "input": _shown(src), "output": _shown(out, "output"), "width": r.width,
        "height": r.height,
        "mode": r.mode, "model": r.model, "bytes": len(r.data), "bpp": r.bpp,
        "psnr_db": None if r.psnr_db is None or math.isinf(r.psnr_db) else r.psnr_db,
        "lmbda": r.lmbda, "lmbda_code": r.lmbda_code, "seconds": r.seconds,
        "rate_control": rc.as_dict() if rc is not None else None, "refine": args.refine,
        "icc_bytes": r.icc_bytes,
    }
    return line, record


def _decode_one(src: Path, out: Path, args: argparse.Namespace) -> tuple[str, dict]:
    from .api import decode_image

    t0 = time.perf_counter()
    _check_output(src, out, args.force)
    fmt = "PNG" if _is_stdio(out) else Image.registered_extensions().get(out.suffix.lower())
    if fmt is None:
        raise ValueError(f"unknown image file extension {out.suffix!r} for {out} (use .png)")
    data = _read_vcd(src)
    image, c = decode_image(data, args.model)
    with _warnings_reported(out):
        _emit(out, lambda f: save_image(image, f, fmt), args.force)
    seconds = time.perf_counter() - t0
    bpp = len(data) * 8 / c.pixels
    line = (f"{_shown(src)} -> {_shown(out, 'output')}  {c.width}x{c.height} {c.mode}  "
            f"{bpp:.4f} bpp  {seconds:.2f} s")
    record = {"input": _shown(src), "output": _shown(out, "output"), "width": c.width,
              "height": c.height,
              "mode": c.mode, "model": c.model_name, "bytes": len(data), "bpp": bpp,
              "seconds": seconds}
    return line, record


def _one(src: Path, out: Path, args: argparse.Namespace, decode: bool) -> str:
    """Code one file; the line to print, or :class:`_Failed` with a message naming it."""
    from .rate_control import RateTargetError

    try:
        line, record = (_decode_one if decode else _encode_one)(src, out, args)
    except RateTargetError as e:
        raise _Failed(_naming(src, e), code=3) from None
    except (VaricodecError, ValueError, OSError) as e:
        raise _Failed(_naming(src, e)) from None
    return json.dumps(record) if args.json else line


def _run(args: argparse.Namespace, decode: bool) -> int:
    src = Path(args.input)
    if not _is_stdio(src) and not src.exists():
        raise FileNotFoundError(f"no such file or folder: {src}")
    if _is_stdio(src) or not src.is_dir():
        out = _resolve_output(src, args.output, decode)
        try:  # with the file on standard output, what is said goes to stderr
            print(_one(src, out, args, decode), file=sys.stderr if _is_stdio(out) else sys.stdout)
        except _Failed as e:
            print(f"varicodec: error: {e}", file=sys.stderr)
            return e.code
        return 0
    # a folder
    if args.output == STDIO:
        raise VaricodecError(f"{src} is a folder: standard output takes one file, not a folder")
    inputs = list_images(src, (SUFFIX,) if decode else IMAGE_SUFFIXES)
    if not inputs:
        raise VaricodecError(f"no {'.vcd files' if decode else 'images'} in {src}")
    out_dir = Path(args.output) if args.output else src
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} is not a folder")
    if not out_dir.parent.is_dir():
        raise FileNotFoundError(f"output folder {out_dir.parent} does not exist")
    outputs = [out_dir / _default_output(p, decode).name for p in inputs]
    seen: dict[Path, Path] = {}
    for p, o in zip(inputs, outputs):
        if o in seen:
            raise VaricodecError(f"{seen[o].name} and {p.name} would both be written to {o.name}")
        seen[o] = p
    out_dir.mkdir(exist_ok=True)
    from ..progress import progress_bar

    codes: list[int] = []
    verb = "decoded" if decode else "encoded"
    bar = progress_bar(len(inputs), verb.removesuffix("d"), "img", enabled=not args.quiet)
    for p, o in zip(inputs, outputs):
        try:
            bar.write(_one(p, o, args, decode))
        except _Failed as e:
            codes.append(e.code)
            bar.write(f"varicodec: error: {e}", file=sys.stderr)
        bar.update(1)
    bar.close()
    summary = f"{len(inputs) - len(codes)} of {len(inputs)} files {verb} into {out_dir}"
    print(summary, file=sys.stderr if args.json else sys.stdout)
    return 0 if not codes else 2 if 2 in codes else 3


def _cmd_encode(args: argparse.Namespace) -> int:
    return _run(args, decode=False)


def _cmd_decode(args: argparse.Namespace) -> int:
    return _run(args, decode=True)


def _cmd_info(args: argparse.Namespace) -> int:
    from .header import info

    src = Path(args.input)
    try:
        d = info(_read_vcd(src), args.model)
    except (VaricodecError, ValueError, OSError) as e:
        print(f"varicodec: error: {_naming(src, e)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    width = max(len(k) for k in d)
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif isinstance(v, dict):
            unit = " B" if k == "streams" else ""
            v = ", ".join(f"{a} {b}{unit}" for a, b in v.items())
        print(f"{k:<{width}}  {v}")
    return 0
