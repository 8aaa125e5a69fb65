"""``varicodec demo [IMAGE]``: the main job in one command.

Compresses and decompresses an image with the bundled default model at a few
qualities (one model, many rates) and prints real bpp (file bytes) and PSNR, beside
JPEG and WebP at the same file size. Without an image it codes the portrait of
Grace Hopper that Matplotlib ships (public domain), or a synthetic test picture
where that file is missing, so it runs anywhere.

Each classical codec's integer quality is searched for the file closest in bytes
to ours (:func:`varicodec.serve.compare.match_size`; JPEG 4:2:0 and WebP at
method 6, as in docs/results/classical.md), so each row compares three files of
about the same size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

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


#: the classical codecs of the demo's comparison (names of :mod:`varicodec.eval.classical`)
COMPARED = ("jpeg", "webp")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compress + decompress an image with the bundled model",
                       description=__doc__.split("\n\n")[1])
    p.add_argument("image", nargs="?",
                   help="image file (default: Matplotlib's photo of Grace Hopper)")
    p.add_argument("--model", help="model name or .safetensors path (default: bundled)")
    p.add_argument("--quality", type=float, nargs="+", default=[2.0, 4.0, 6.0, 8.0],
                   help="continuous qualities in [1, 8] (default: 2 4 6 8)")
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="leave out JPEG and WebP at the same size")
    p.set_defaults(func=_demo, fast_exit=True)


def _default_image() -> tuple[np.ndarray, str]:
    from .serve.samples import load_sample

    try:
        photo = load_sample("grace-hopper")
    except ValueError as e:
        return synthetic_image(), f"synthetic test picture ({e})"
    return photo, "Grace Hopper's portrait (Matplotlib's sample, public domain)"


def _weights(model) -> str:
    """Where the model's weights came from: "bundled weights" or the file's path."""
    from .models.registry import bundled_weights

    source = getattr(model, "source", None)
    if source is None or Path(source) == bundled_weights(model.name):
        return "bundled weights"
    return source


def _classical_at(rgb: np.ndarray, target_bytes: int) -> list[tuple[int, float]]:
    """(bytes, PSNR dB) of each codec of :data:`COMPARED` at the quality whose file is
    closest in bytes to ``target_bytes``."""
    from .eval.classical import get_codec
    from .metrics import psnr_db
    from .serve.compare import CLASSICAL, match_size

    out = []
    for name in COMPARED:
        codec = get_codec(name)
        _, lo, hi = CLASSICAL[name]
        m = match_size(lambda q, codec=codec: codec.encode(rgb, q), target_bytes, lo, hi)
        out.append((len(m.data), psnr_db(rgb, codec.decode(m.data))))
    return out


def _demo(args: argparse.Namespace) -> int:
    from .codec import decode, encode_image, resolve_model
    from .eval.classical import get_codec
    from .imageio import load_rgb
    from .metrics import psnr_db

    if args.image:
        image, what = load_rgb(args.image), args.image
    else:
        image, what = _default_image()
    model = resolve_model(args.model)
    h, w = image.shape[:2]
    print(f"{model.name} ({_weights(model)}) on {what}, {w}×{h} px")
    head = (f"{'quality':>7} {'lambda':>8} {'bytes':>8} {'bpp':>7} {'PSNR dB':>8} "
            f"{'enc s':>6} {'dec s':>6}")
    if args.compare:
        print("JPEG and WebP (method 6): the quality whose file is closest in bytes to ours")
        print((f"{'varicodec':^{len(head)}}"
               + "".join(f" {get_codec(n).description:^14}" for n in COMPARED)).rstrip())
        head += "".join(f" {'bytes':>7} {'dB':>6}" for _ in COMPARED)
    print(head)
    for q in args.quality:
        kw = {"quality": q} if model.variable_rate else {}
        r = encode_image(image, model, compute_psnr=False, **kw)
        t = time.perf_counter()
        out = np.asarray(decode(r.data, model).convert("RGB"), dtype=np.uint8)
        dec_s = time.perf_counter() - t
        row = (f"{q:7.2f} {r.lmbda:8.4f} {len(r.data):8d} {r.bpp:7.3f} "
               f"{psnr_db(image, out):8.2f} {r.seconds:6.2f} {dec_s:6.2f}")
        if args.compare:
            row += "".join(f" {n:7d} {db:6.2f}" for n, db in _classical_at(image, len(r.data)))
        print(row)
        if not model.variable_rate:
            break
    return 0
