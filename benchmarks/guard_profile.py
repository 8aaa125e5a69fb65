"""Where a guarded decode spends its extra time: cProfile of one file decoded with its
guard against the same image coded without it (index_margin=0), alternating.

    python benchmarks/guard_profile.py --model checkpoints/paper/joint-ecgbm-128-cpu.safetensors \
        --image ../shared/data/kodak/kodim02.png --quality 1 --threads 2

Prints, per pass, the wall-clock per decode and the functions with the most own time
(profiling adds overhead to Python-heavy code, so read the differences, not the totals).

``--inside`` times instead, without the profiler, the guard's per-call decoder work
(``_IndexGuard._decode_call``, once per wavefront for the joint model) inside real
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
    decoder calls; then those calls of one guarded decode replayed in a loop."""
    from varicodec.models import codec_model as cm

    call = cm._IndexGuard._decode_call
    spent = {"s": 0.0, "n": 0}
    recorded: list[tuple] = []

    def timed(self, scales, idx, start, n):
        t0 = time.perf_counter()
        out = call(self, scales, idx, start, n)
        spent["s"] += time.perf_counter() - t0
        spent["n"] += 1
        if recording:
            recorded.append((self, scales.clone(), idx.clone(), start, n))
        return out

    cm._IndexGuard._decode_call = timed
    try:
        with torch.inference_mode():
            recording = True
            m.decompress(guard, shape, c.lmbda_code)  # warm-up, records the calls
            recording = False
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
            best = float("inf")
            for _ in range(10):
                t0 = time.perf_counter()
                for args in recorded:
                    call(*args)
                best = min(best, time.perf_counter() - t0)
    finally:
        cm._IndexGuard._decode_call = call
    print(f"replayed in a loop: {1e3 * best:.1f} ms for the {len(recorded)} calls of "
          f"one guarded decode (best of 10)")


if __name__ == "__main__":
    main()
