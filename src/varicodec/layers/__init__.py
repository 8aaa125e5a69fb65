"""The paper's two plug-ins: energy-based channel gating and the bit-rate modulator."""

from .gate import (
    EnergyChannelGate,
    GatedConv2d,
    GatedConvTranspose2d,
    eca_kernel_size,
    gates_of,
    insert_gates,
)
from .modulator import BitrateModulator, LmbdaRange

__all__ = [
    "BitrateModulator",
    "EnergyChannelGate",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "LmbdaRange",
    "eca_kernel_size",
    "gates_of",
    "insert_gates",
]
