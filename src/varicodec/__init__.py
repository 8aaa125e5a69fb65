"""varicodec: variable-rate, channel-gated learned image compression.

One model covers a continuous range of bit-rates (bit-rate modulator, BM) and
runs on sparse convolution inputs (energy-based channel gating, ECG), on top of
CompressAI's architectures and entropy coders.
"""

import warnings

# CompressAI 1.2.8 scripts a helper with torch.jit.script at import time, which
# torch 2.14 flags as deprecated; the warning says nothing to our users.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)

from .layers import BitrateModulator, EnergyChannelGate, insert_gates  # noqa: E402
from .losses import RateDistortionLoss  # noqa: E402
from .models import VaricodecModel, create_model, list_models, load_model, save_model  # noqa: E402
from .quality import QUALITY_LMBDAS, quality_to_lmbda  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "QUALITY_LMBDAS",
    "BitrateModulator",
    "EnergyChannelGate",
    "RateDistortionLoss",
    "VaricodecModel",
    "create_model",
    "insert_gates",
    "list_models",
    "load_model",
    "quality_to_lmbda",
    "save_model",
]
