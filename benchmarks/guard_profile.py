"""Where a guarded decode spends its extra time: cProfile of one file decoded with its
guard against the same image coded without it (index_margin=0), alternating.

    python benchmarks/guard_profile.py --model checkpoints/paper/joint-ecgbm-128-cpu.safetensors \
        --image ../shared/data/kodak/kodim02.png --quality 1 --threads 2

Prints, per pass, the wall-clock per decode and the functions with the most own time
(profiling adds overhead to Python-heavy code, so read the differences, not the totals).

``--inside`` times instead, without the profiler, the guard's per-call decoder work
(``IndexGuard._decode_call``, once per wavefront for the joint model) inside real
decodes, and the same calls replayed in a loop on the scales they were given: the
difference is what running between the convolutions costs.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # portability.py

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--quality", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="decodes per profiled pass")
    ap.add_argument("--passes", type=int, default=2, help="guard/none pairs")
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--inside", action="store_true",
                    help="time the guard's decoder calls inside decodes, no profiler")
    a = ap.parse_args(argv)
    if not Path(a.image).is_file():
        sys.exit(f"image {a.image} not found; nothing measured")

    from portability import _guard_pair, _model

    torch.set_num_threads(a.threads)
    m = _model(a.model)
    c, guard, none, shape = _guard_pair(m, Path(a.image), a.quality)
    if a.inside:
        inside(m, c, guard, none, shape, a.passes, a.repeats)
        return
    with torch.inference_mode():
        m.decompress(guard, shape, c.lmbda_code)  # warm-up
        for _ in range(a.passes):
            for name, strings in (("guard", guard), ("none", none)):
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                for _ in range(a.repeats):
                    m.decompress(strings, shape, c.lmbda_code)
                prof.disable()
                print(f"{name}: {(time.perf_counter() - t0) / a.repeats:.3f} s per decode")
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
                text = out.getvalue()
                print(text[text.index("   ncalls"):].rstrip())


def inside(m, c, guard, none, shape, passes: int, repeats: int) -> None:
    """Per pass and file: the wall-clock per decode and the time spent in the guard's
    decoder calls. Then, for one guarded decode: each call against the same call made
    again right after it (warm), and all its calls replayed in a loop, back to back and
    with one convolution before each (as in a decode, where the context model and the
    entropy parameters run between two calls)."""
    from varicodec.models import guard as gm

    call = gm.IndexGuard._decode_call
    spent = {"s": 0.0, "n": 0, "again": 0.0}
    recorded: list[tuple] = []
    recording = False

    def timed(self, scales, idx, start, n):
        t0 = time.perf_counter()
        out = call(self, scales, idx, start, n)
        spent["s"] += time.perf_counter() - t0
        spent["n"] += 1
        if recording:
            t0 = time.perf_counter()
            call(self, scales, idx, start, n)
            spent["again"] += time.perf_counter() - t0
            recorded.append((self, scales.clone(), idx.clone(), start, n))
        return out

    def replay(between=None) -> float:
        total = 0.0
        for args in recorded:
            if between is not None:
                between()
            t0 = time.perf_counter()
            call(*args)
            total += time.perf_counter() - t0
        return total

    gm.IndexGuard._decode_call = timed
    try:
        with torch.inference_mode():
            m.decompress(guard, shape, c.lmbda_code)  # warm-up
            for _ in range(passes):
                for name, strings in (("guard", guard), ("none", none)):
                    spent.update(s=0.0, n=0)
                    t0 = time.perf_counter()
                    for _ in range(repeats):
                        m.decompress(strings, shape, c.lmbda_code)
                    wall = (time.perf_counter() - t0) / repeats
                    own = spent["s"] / repeats
                    print(f"{name}: {wall:.3f} s per decode; guard calls "
                          f"{1e3 * own:.1f} ms ({100 * own / wall:.1f} %) over "
                          f"{spent['n'] // repeats} calls")
            spent.update(s=0.0, n=0)
            recording = True
            m.decompress(guard, shape, c.lmbda_code)
            recording = False
            loop = min(replay() for _ in range(10))
            width = m.config["M"]
            x = torch.randn(1, width, 48, 32)
            w = torch.randn(2 * width, width, 5, 5)
            after_conv = min(replay(lambda: torch.nn.functional.conv2d(x, w, padding=2))
                             for _ in range(3))
    finally:
        gm.IndexGuard._decode_call = call
    print(f"one guarded decode, {len(recorded)} calls: {1e3 * spent['s']:.1f} ms in the "
          f"decode, {1e3 * spent['again']:.1f} ms for the same calls again right after "
          f"each; replayed in a loop {1e3 * loop:.1f} ms (best of 10), with a "
          f"{width}->{2 * width} 5x5 convolution before each call {1e3 * after_conv:.1f} "
          f"ms (best of 3)")


if __name__ == "__main__":
    main()
