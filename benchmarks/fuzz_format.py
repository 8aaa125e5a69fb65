"""Fuzz the ``.vcd`` reader: every damaged file must end in a clean
:class:`~varicodec.errors.VaricodecError` (or decode to a valid image), never
another exception, a crash or a hang.

Seeds are valid files written by a tiny model (N = M = 16, random weights with
a scaled analysis output so the streams are not trivial) for several image
kinds (RGB, gray, RGBA, sizes 1×1 to 70×90). Each case applies one mutation —
bit flips, byte overwrites in the header, truncation, splicing two files,
insertion or deletion — and then, with probability ``--recrc``, recomputes the
CRC-32, so that the parser's field checks and the entropy decoders behind it
see the damage too (without it the CRC rejects nearly everything).

    nice -n 10 python benchmarks/fuzz_format.py --cases 20000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import signal
import struct
import sys
import time
import zlib

import numpy as np
import torch

from varicodec.codec import decode, encode
from varicodec.errors import VaricodecError
from varicodec.models import VaricodecModel, create_model

MUTATIONS = ("flip", "header", "truncate", "splice", "insert", "delete")


def tiny_model(name: str = "hyperprior-ecgbm", seed: int = 0, gain: float = 10.0) -> VaricodecModel:
    """A small model whose streams carry real information (for tests and fuzzing)."""
    torch.manual_seed(seed)
    m = create_model(name, N=16, M=16).eval()
    with torch.no_grad():  # random g_a outputs are tiny: scale them up to code real symbols
        m.net.g_a[-1].weight.mul_(gain)
        m.net.g_a[-1].bias.mul_(gain)
    m.update(force=True)
    return m


def seed_files(model: VaricodecModel, rng: np.random.Generator) -> list[bytes]:
    """Valid ``.vcd`` files of several kinds and sizes."""
    files = []
    for h, w, kind in ((1, 1, "rgb"), (33, 47, "rgb"), (64, 64, "gray"), (70, 90, "rgba"),
                       (20, 130, "la")):
        c = {"rgb": 3, "gray": 1, "rgba": 4, "la": 2}[kind]
        img = (rng.random((h, w, c)) * 255).astype(np.uint8)
        if kind == "rgba":
            img[..., 3] = np.where(rng.random((h, w)) < 0.5, 255, 0)
        q = float(rng.uniform(1, 8)) if model.variable_rate else None
        files.append(encode(img, model, quality=q))
    files.append(_with_icc(files[1]))
    return files


def _with_icc(data: bytes) -> bytes:
    """``data`` as format version 6 with an ICC profile stream (LittleCMS's sRGB profile:
    the encoder itself never carries an sRGB one, but the parser must read any)."""
    import dataclasses

    from PIL import ImageCms

    from varicodec.codec.format import ICC_VERSION, Container
    from varicodec.icc import pack_icc

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    c = Container.unpack(data)
    return dataclasses.replace(c, version=ICC_VERSION, icc=pack_icc(profile)).pack()


def mutate(data: bytes, others: list[bytes], rng: np.random.Generator,
           recrc: float) -> tuple[str, bytes]:
    kind = MUTATIONS[int(rng.integers(len(MUTATIONS)))]
    b = bytearray(data)
    n = len(b)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(n))
            b[i] ^= 1 << int(rng.integers(8))
    elif kind == "header":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(min(n, 32)))
            b[i] = int(rng.integers(256))
    elif kind == "truncate":
        b = b[: int(rng.integers(n))]
    elif kind == "splice":
        other = others[int(rng.integers(len(others)))]
        b = b[: int(rng.integers(n + 1))] + other[int(rng.integers(len(other) + 1)):]
    elif kind == "insert":
        i = int(rng.integers(n + 1))
        b[i:i] = rng.bytes(int(rng.integers(1, 17)))
    else:  # delete
        i = int(rng.integers(n))
        del b[i: i + int(rng.integers(1, 17))]
    if len(b) > 4 and rng.random() < recrc:
        b[-4:] = struct.pack(">I", zlib.crc32(bytes(b[:-4])))
        kind += "+crc"
    return kind, bytes(b)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def fuzz(model: VaricodecModel, cases: int, seed: int = 0, recrc: float = 0.3,
         max_pixels: int = 1 << 16, timeout_s: float = 10.0, progress: bool = False) -> dict:
    """Run ``cases`` mutated files through :func:`decode`.

    Returns ``{"outcomes": Counter, "failures": [(case, mutation, error)], "max_s": float}``;
    an outcome is ``"image"`` or the :class:`VaricodecError` subclass name.
    Anything else (another exception, a case over ``timeout_s`` of CPU time) is a failure.
    """
    rng = np.random.default_rng(seed)
    files = seed_files(model, rng)
    outcomes: collections.Counter[str] = collections.Counter()
    failures: list[tuple[int, str, str]] = []
    max_s = 0.0
    # the limit is on CPU time (ITIMER_PROF), so a starved process on a busy
    # machine is not mistaken for a hang; a loop in Python or in the C++ coder is caught
    use_alarm = hasattr(signal, "setitimer")
    if use_alarm:
        old = signal.signal(signal.SIGPROF, _alarm)
    t_start = time.perf_counter()
    try:
        for case in range(cases):
            kind, data = mutate(files[int(rng.integers(len(files)))], files, rng, recrc)
            t0 = time.perf_counter()
            try:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_PROF, timeout_s)
                image = decode(data, model, max_pixels=max_pixels)
                image.load()
                outcomes["image"] += 1
            except VaricodecError as e:
                outcomes[type(e).__name__] += 1
            except _Timeout:
                failures.append((case, kind, f"hang (> {timeout_s} s of CPU time)"))
            except Exception as e:  # noqa: BLE001 — this is what we are looking for
                failures.append((case, kind, f"{type(e).__name__}: {e}"))
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_PROF, 0)
            max_s = max(max_s, time.perf_counter() - t0)
            if progress and failures and failures[-1][0] == case:
                print(f"FAIL case {case} ({kind}): {failures[-1][2]}", file=sys.stderr, flush=True)
            if progress and (case + 1) % 1000 == 0:
                print(f"{case + 1} cases, {len(failures)} failures, "
                      f"{time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
    finally:
        if use_alarm:
            signal.signal(signal.SIGPROF, old)
    return {"outcomes": outcomes, "failures": failures, "max_s": max_s,
            "seconds": time.perf_counter() - t_start}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--recrc", type=float, default=0.3,
                    help="fraction of cases whose CRC is recomputed after the mutation")
    ap.add_argument("--model", default="hyperprior-ecgbm",
                    help="registry name of the tiny model (N=M=16)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = tiny_model(args.model)
    r = fuzz(model, args.cases, args.seed, args.recrc, progress=True)
    print(f"{args.cases} cases in {r['seconds']:.0f} s (slowest {r['max_s']:.2f} s): "
          + ", ".join(f"{k} {v}" for k, v in sorted(r["outcomes"].items())))
    for case, kind, err in r["failures"][:20]:
        print(f"FAIL case {case} ({kind}): {err}")
    print(f"{len(r['failures'])} failures")
    return 1 if r["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
