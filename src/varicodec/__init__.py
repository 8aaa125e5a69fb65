"""varicodec: variable-rate, channel-gated learned image compression.

One model covers a continuous range of bit-rates (bit-rate modulator, BM) and
runs on sparse convolution inputs (energy-based channel gating, ECG), on top of
CompressAI's architectures and entropy coders.

The public names below are imported on first use (PEP 562), so ``import
varicodec`` and the command line's ``--help``, ``models`` and ``info`` do not
pay for torch; :mod:`varicodec._compressai` keeps CompressAI's point-cloud stack
out of the imports that do.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from . import _compressai
from ._lazy import lazy_exports

# CompressAI 1.2.8 scripts a helper with torch.jit.script at import time, which
# torch 2.14 flags as deprecated; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
_compressai.install()

__version__ = "0.1.0"

#: public name → module that defines it
_EXPORTS = {
    "BitrateModulator": ".layers",
    "EnergyChannelGate": ".layers",
    "insert_gates": ".layers",
    "RateDistortionLoss": ".losses",
    "VaricodecModel": ".models",
    "create_model": ".models",
    "list_models": ".models",
    "load_model": ".models",
    "save_model": ".models",
    "QUALITY_LMBDAS": ".quality",
    "quality_to_lmbda": ".quality",
}

__all__ = [
    "BitrateModulator",
    "EnergyChannelGate",
    "QUALITY_LMBDAS",
    "RateDistortionLoss",
    "VaricodecModel",
    "create_model",
    "insert_gates",
    "list_models",
    "load_model",
    "quality_to_lmbda",
    "save_model",
]

if TYPE_CHECKING:
    from .layers import BitrateModulator, EnergyChannelGate, insert_gates
    from .losses import RateDistortionLoss
    from .models import VaricodecModel, create_model, list_models, load_model, save_model
    from .quality import QUALITY_LMBDAS, quality_to_lmbda


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
