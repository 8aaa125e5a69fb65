"""Where a guarded decode spends its extra time: cProfile of one file decoded with its
guard against the same image coded without it (index_margin=0), alternating.

    python benchmarks/guard_profile.py --model checkpoints/paper/joint-ecgbm-128-cpu.safetensors \
        --image ../shared/data/kodak/kodim02.png --quality 1 --threads 2

Prints, per pass, the wall-clock per decode and the functions with the most own time
(profiling adds overhead to Python-heavy code, so read the differences, not the totals).
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
    a = ap.parse_args(argv)
    if not Path(a.image).is_file():
        sys.exit(f"image {a.image} not found; nothing measured")

    from portability import _guard_pair, _model

    torch.set_num_threads(a.threads)
    m = _model(a.model)
    c, guard, none, shape = _guard_pair(m, Path(a.image), a.quality)
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


if __name__ == "__main__":
    main()
