"""``varicodec demo [IMAGE]``: the main job in one command.

Compresses and decompresses an image with the bundled default model at a few
qualities (one model, many rates) and prints real bpp (file bytes) and PSNR.
Without an image it draws a synthetic test picture, so it runs anywhere.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

__all__ = ["register", "synthetic_image"]


def synthetic_image(width: int = 512, height: int = 384, seed: int = 0) -> np.ndarray:
    """A deterministic test picture: smooth gradients, edges, discs and fine texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width, yy / height, 0.5 + 0.5 * np.sin(xx / 37 + yy / 53)], -1)
    for _ in range(12):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(15, 80)
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < r**2
        img[inside] = rng.uniform(0, 1, 3)
    img[height // 2:, : width // 3] = (0.5 + 0.25 * np.sign(np.sin(xx[height // 2:, : width // 3]
                                                                   / 3)))[..., None]
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compress + decompress an image with the bundled model",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("image", nargs="?", help="image file (default: a synthetic test picture)")
    p.add_argument("--model", help="model name or .safetensors path (default: bundled)")
    p.add_argument("--quality", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0],
                   help="continuous qualities in [1, 8] (default: 2 4 6 8)")
    p.set_defaults(func=_demo, fast_exit=True)


def _demo(args: argparse.Namespace) -> int:
    from .codec import decode, encode_image, resolve_model
    from .imageio import load_rgb

    image = load_rgb(args.image) if args.image else synthetic_image()
    what = args.image or "synthetic test picture"
    model = resolve_model(args.model)
    h, w = image.shape[:2]
    print(f"{model.name} ({getattr(model, 'source', 'bundled')}) on {what}, {w}×{h} px")
    print(f"{'quality':>7} {'lambda':>8} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} "
          f"{'enc s':>6} {'dec s':>6}")
    for q in args.quality:
        kw = {"quality": q} if model.variable_rate else {}
        r = encode_image(image, model, compute_psnr=False, **kw)
        t = time.perf_counter()
        out = np.asarray(decode(r.data, model).convert("RGB"), dtype=np.float64)
        dec_s = time.perf_counter() - t
        mse = np.mean((out - image.astype(np.float64)) ** 2)
        psnr = 10 * np.log10(255**2 / max(mse, 1e-10))
        print(f"{q:7.2f} {r.lmbda:8.4f} {len(r.data):8d} {r.bpp:7.3f} {psnr:8.2f} "
              f"{r.seconds:6.2f} {dec_s:6.2f}")
        if not model.variable_rate:
            break
    return 0
