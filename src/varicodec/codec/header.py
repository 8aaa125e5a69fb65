"""``info(data)``: what a ``.vcd`` file holds, read from its header alone.

Imports no torch, so ``varicodec info`` starts as fast as Python does; λ comes
from the λ range in the weights file's metadata (tensors are not loaded).
"""

from __future__ import annotations

import os

from ..imageio import MAX_PIXELS
from ..quality import lmbda_to_quality
from .format import Container, lmbda_from_code
from .tiles import TiledFile, is_tiled

__all__ = ["info"]


def info(data: bytes, model=None) -> dict:
    """Header fields, stream sizes and rate of ``.vcd`` bytes (CRC checked).

    λ itself needs the model's trained range: it is given when ``model`` (a
    :class:`~varicodec.models.VaricodecModel`, a registry name or a
    ``.safetensors`` path; default: the bundled weights of the file's model)
    can tell it.
    """
    from .pretrained import lmbda_range_of

    if is_tiled(data):
        c: Container | TiledFile = TiledFile.unpack(data, MAX_PIXELS)
        streams = c.stream_sizes()
        side = bool(streams.get("side"))
        overhead = len(data) - sum(streams.values())  # outer header and every tile's header
    else:
        c = Container.unpack(data, MAX_PIXELS)
        streams, side, overhead = c.stream_sizes(), bool(c.side), c.overhead
    d = {
        "format_version": c.version,
        "model": c.model_name,
        "fingerprint": c.fingerprint.hex(),
        "width": c.width,
        "height": c.height,
        "mode": c.mode,
        "lmbda_code": c.lmbda_code,
        "bytes": len(data),
        "overhead_bytes": overhead,
        "streams": streams,
        "gate_side_stream": side,
        "bpp": len(data) * 8 / c.pixels,
    }
    profile = c.icc_profile()
    if profile is not None:
        from ..icc import describe

        d["icc_profile"] = f"{describe(profile)} ({len(profile)} B, stored in {len(c.icc)} B)"
    if isinstance(c, TiledFile):
        d["tiles"] = {"count": len(c.tiles), "tile": c.tile, "margin": c.margin}
    if c.lmbda_code is not None:
        if model is not None and not isinstance(model, (str, os.PathLike)):  # a model object
            r = model.lmbda_range
            rng = (r.min, r.max) if r is not None else None
        else:
            rng = lmbda_range_of(model if model is not None else c.model_name)
        if rng is not None:
            lm = lmbda_from_code(c.lmbda_code, rng)
            d["lmbda"] = lm
            d["quality"] = lmbda_to_quality(lm)
    return d
