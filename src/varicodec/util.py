"""Small utilities with one home: writing a file atomically, listing image files,
asking git which commit is running, keeping freed memory for reuse. Plain standard
library, no torch.

File mode: every file varicodec writes (``.vcd`` files, decoded images, weights,
training checkpoints) gets ``0o666 & ~umask``, the mode ``open()`` would give it —
what the user's umask says, the same for every kind of output. (Weights were 0644
and checkpoints 0600 by accident of ``tempfile.mkstemp`` before; neither holds
anything secret, and a umask of 077 still makes both private.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["IMAGE_SUFFIXES", "atomic_write", "git", "git_commit", "git_dirty",
           "is_image_name", "list_images", "remove_unfinished_writes", "retain_freed_memory",
           "trim_freed_memory"]

#: file name extensions read as images by the codec, training and evaluation
#: (lower case; Pillow reads them all)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp",
                  ".gif")

#: the repository this package runs from, when it runs from a checkout
_REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ memory
#: ``mallopt`` parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _libc_function(name: str, argtypes: tuple, restype):
    """The C library function ``name`` with its ctypes signature, or ``None`` off
    Linux or where the library has no such function (musl, say)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return function


def retain_freed_memory(limit: int = 96 << 20, pad: int = 256 << 20) -> bool:
    """Ask the C library's ``malloc`` to keep freed memory for reuse instead of handing
    it back to the system: blocks of up to ``limit`` bytes, and ``pad`` bytes of free
    space at the top of its heap.

    By default glibc maps blocks above a threshold (at most 32 MiB) afresh and unmaps
    them when freed, and returns the top of its heap once enough of it is free, so
    each activation of a transform on a Kodak-sized image (up to 75 MB) costs page
    faults on first touch, every call. With this set, freed blocks up to ``limit`` are
    reused (the default, 96 MiB, covers every activation of a Kodak-sized image: the
    largest, 192 × 384 × 256 floats, is 72 MiB), and when the heap's free top passes
    ``limit`` it is cut back to ``pad`` (``M_TOP_PAD``; glibc's default 128 KiB), not
    to nothing, so the next transform's activations land on pages already mapped. On
    Kodak images with the bundled model the pad is most of the gain: 1.6× faster
    encoding and 1.3× faster decoding than the system's default, where ``limit`` alone
    gives 1.2× / 1.2× (``benchmarks/allocator.py``, docs/results/startup.md). Larger
    blocks are still mapped and unmapped, and tiled coding trims after each tile
    (:func:`trim_freed_memory`), so its peak stays bounded. What is freed is kept by
    the process until it ends, so it suits one-shot commands and the benchmarks,
    which call it; the library itself never changes the process's allocator.

    Returns whether the setting took (``False`` off glibc, e.g. musl or macOS).
    """
    import ctypes

    mallopt = _libc_function("mallopt", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    return mallopt is not None and bool(
        mallopt(_M_MMAP_THRESHOLD, limit) and mallopt(_M_TRIM_THRESHOLD, limit)
        and mallopt(_M_TOP_PAD, pad))


def trim_freed_memory() -> bool:
    """Hand the free memory ``malloc`` keeps back to the system (glibc's
    ``malloc_trim``); ``False`` where there is no such call. Tiled coding calls it
    after each tile, so that :func:`retain_freed_memory` does not carry one tile's
    freed activations into the next and the peak stays one tile's."""
    import ctypes

    malloc_trim = _libc_function("malloc_trim", (ctypes.c_size_t,), ctypes.c_int)
    if malloc_trim is None:
        return False
    malloc_trim(0)
    return True


# ------------------------------------------------------------------ writing
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: temporary files of the atomic writes in progress (for an exit that runs no ``finally``)
_UNFINISHED: set[Path] = set()


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Write ``path`` all at once or not at all.

    ``write(tmp)`` writes the content to ``tmp``, a fresh file in ``path``'s folder
    (so the final ``os.replace`` is a rename on one file system); on any error
    ``tmp`` is removed and ``path`` is left as it was. The file gets mode
    ``0o666 & ~umask``. The folder must exist.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:  # at once: a Ctrl-C from here on leaves no temporary file behind
        tmp = Path(name)
        _UNFINISHED.add(tmp)
        os.close(fd)
        write(tmp)
        # after writing: mkstemp makes 0600, and so does safetensors, which replaces the file
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        Path(name).unlink(missing_ok=True)
        _UNFINISHED.discard(Path(name))
    return path


def remove_unfinished_writes() -> None:
    """Remove the temporary files of every :func:`atomic_write` still in progress.

    For a process about to end with ``os._exit`` (which skips the ``finally`` that
    would remove them): the outputs those writes were making stay as they were.
    """
    for tmp in list(_UNFINISHED):
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass


# ------------------------------------------------------------------ listing
def is_image_name(path: str | os.PathLike, suffixes: Iterable[str] = IMAGE_SUFFIXES) -> bool:
    """``path`` names an image file by its extension (case-insensitive); hidden names
    (``.name``) never do."""
    p = Path(path)
    return p.suffix.lower() in tuple(suffixes) and not p.name.startswith(".")


def list_images(folder: str | os.PathLike, suffixes: Iterable[str] = IMAGE_SUFFIXES,
                what: str = "image folder") -> list[Path]:
    """The files directly in ``folder`` whose names pass :func:`is_image_name`
    (with ``suffixes``, e.g. ``(".vcd",)``), sorted by name; possibly none.

    ``FileNotFoundError`` / ``NotADirectoryError`` name the folder as ``what``.
    """
    d = Path(folder)
    if not d.exists():
        raise FileNotFoundError(f"no such {what}: {d}")
    if not d.is_dir():
        raise NotADirectoryError(f"{what} is not a folder: {d}")
    suffixes = tuple(suffixes)
    return sorted(p for p in d.iterdir() if is_image_name(p, suffixes) and p.is_file())


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# -------------------------------------------------------------------- git
def git(*args: str, cwd: str | os.PathLike = _REPO) -> str | None:
    """``git ARGS`` in ``cwd`` (default: this package's checkout): its stripped output,
    or ``None`` when git is missing, fails or there is no repository."""
    try:
        out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_commit(short: bool = False) -> str | None:
    """The commit this package's checkout is at, or ``None`` outside a checkout."""
    return git("rev-parse", *(["--short"] if short else []), "HEAD") or None


def git_dirty() -> bool | None:
    """Whether tracked files differ from that commit (``None``: unknown)."""
    status = git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
