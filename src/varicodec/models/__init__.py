"""The registry's models and how to build, save and load them.

Names are imported on first use: the registry's names and a weights file's card
(:func:`list_models`, :func:`read_card`) need no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "ARCHITECTURES": ".registry",
    "VARIANTS": ".registry",
    "VaricodecModel": ".codec_model",
    "load_model": ".io",
    "read_card": ".io",
    "save_model": ".io",
    "weights_fingerprint": ".io",
    "bundled_weights": ".registry",
    "create_model": ".registry",
    "list_models": ".registry",
    "parse_name": ".registry",
}

__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "VaricodecModel",
    "bundled_weights",
    "create_model",
    "list_models",
    "load_model",
    "parse_name",
    "read_card",
    "save_model",
    "weights_fingerprint",
]

if TYPE_CHECKING:
    from .codec_model import VaricodecModel
    from .io import load_model, read_card, save_model, weights_fingerprint
    from .registry import (
        ARCHITECTURES,
        VARIANTS,
        bundled_weights,
        create_model,
        list_models,
        parse_name,
    )


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
