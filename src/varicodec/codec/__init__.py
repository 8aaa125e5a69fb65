"""The codec people use: images ⇄ ``.vcd`` files.

``encode(image, model=None, *, lmbda | quality | bpp | psnr) -> bytes``,
``decode(data, model=None) -> PIL.Image``, ``info(data) -> dict``; the
container is described in ``docs/FORMAT.md`` and :mod:`.format`.
"""

from .api import DEFAULT_QUALITY, EncodeResult, decode, decode_image, encode, encode_image, info
from .format import FORMAT_VERSION, Container
from .pretrained import DEFAULT_MODEL, resolve_model
from .rate_control import RateControlReport

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_QUALITY",
    "FORMAT_VERSION",
    "Container",
    "EncodeResult",
    "RateControlReport",
    "decode",
    "decode_image",
    "encode",
    "encode_image",
    "info",
    "resolve_model",
]
