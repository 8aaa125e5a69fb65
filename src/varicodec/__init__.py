"""varicodec: variable-rate, channel-gated learned image compression.

One model covers a continuous range of bit-rates (bit-rate modulator, BM) and
runs on sparse convolution inputs (energy-based channel gating, ECG), on top of
CompressAI's architectures and entropy coders.
"""

from .layers import BitrateModulator, EnergyChannelGate, insert_gates
from .losses import RateDistortionLoss
from .models import VaricodecModel, create_model, list_models, load_model, save_model
from .quality import QUALITY_LMBDAS, quality_to_lmbda

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
