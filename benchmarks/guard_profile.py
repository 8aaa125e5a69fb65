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

    from varicodec.codec.api import _guarded, _z_shape, encode_image
    from varicodec.codec.format import Container
    from varicodec.codec.pretrained import resolve_model

    torch.set_num_threads(a.threads)
    m = resolve_model(a.model)
    q = a.quality if m.variable_rate else None
    c = Container.unpack(encode_image(a.image, m, quality=q, compute_psnr=False).data)
    orig = m.compress
    m.compress = lambda x, lmbda=None: orig(x, lmbda, index_margin=0.0)
    try:
        u = Container.unpack(encode_image(a.image, m, quality=q, compute_psnr=False).data)
    finally:
        del m.compress
    zh, zw = _z_shape(m, c.width, c.height)
    n_y = m.config["M"] * zh * zw * 16
    side = [[c.side]] if m.gated else []
    guard = [[_guarded(c.y, n_y)], [c.z], *side, [c.guard]]
    none = [[_guarded(u.y, n_y)], [u.z], *([[u.side]] if m.gated else [])]
    with torch.inference_mode():
        m.decompress(guard, (zh, zw), c.lmbda_code)  # warm-up
        for _ in range(a.passes):
            for name, strings in (("guard", guard), ("none", none)):
                prof = cProfile.Profile()
                t0 = time.perf_counter()
                prof.enable()
                for _ in range(a.repeats):
                    m.decompress(strings, (zh, zw), c.lmbda_code)
                prof.disable()
                print(f"{name}: {(time.perf_counter() - t0) / a.repeats:.3f} s per decode")
                out = io.StringIO()
                pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(a.top)
                text = out.getvalue()
                print(text[text.index("   ncalls"):].rstrip())


if __name__ == "__main__":
    main()
