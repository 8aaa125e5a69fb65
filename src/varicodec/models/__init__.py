"""The twelve models and how to build, save and load them."""

from .codec_model import ARCHITECTURES, VARIANTS, VaricodecModel
from .io import load_model, read_card, save_model, weights_fingerprint
from .registry import create_model, list_models, parse_name

__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "VaricodecModel",
    "create_model",
    "list_models",
    "load_model",
    "parse_name",
    "read_card",
    "save_model",
    "weights_fingerprint",
]
