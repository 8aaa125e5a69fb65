"""The codec people use: images ⇄ ``.vcd`` files.

``encode(image, model=None, *, lmbda | quality | bpp | psnr) -> bytes``,
``decode(data, model=None) -> PIL.Image``, ``info(data) -> dict``; the
container is described in ``docs/FORMAT.md`` and :mod:`.format`.

Names are imported on first use, so ``info`` and the container need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_QUALITY": ".api",
    "EncodeResult": ".api",
    "decode": ".api",
    "decode_image": ".api",
    "encode": ".api",
    "encode_image": ".api",
    "info": ".header",
    "FORMAT_VERSION": ".format",
    "Container": ".format",
    "DEFAULT_MODEL": ".pretrained",
    "resolve_model": ".pretrained",
    "RateControlReport": ".rate_control",
}

__all__ = [
    "Container",
    "DEFAULT_MODEL",
    "DEFAULT_QUALITY",
    "EncodeResult",
    "FORMAT_VERSION",
    "RateControlReport",
    "decode",
    "decode_image",
    "encode",
    "encode_image",
    "info",
    "resolve_model",
]

if TYPE_CHECKING:
    from .api import DEFAULT_QUALITY, EncodeResult, decode, decode_image, encode, encode_image
    from .format import FORMAT_VERSION, Container
    from .header import info
    from .pretrained import DEFAULT_MODEL, resolve_model
    from .rate_control import RateControlReport


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
