"""The paper's two plug-ins: energy-based channel gating and the bit-rate modulator,
and the switch of the gated convolutions' sparse execution."""

from .gate import (
    EnergyChannelGate,
    GatedConv2d,
    GatedConvTranspose2d,
    eca_kernel_size,
    gates_of,
    insert_gates,
)
from .gdn import InplaceGDN, use_inplace_gdn
from .modulator import BitrateModulator, LmbdaRange
from .sparse import GatedConv, calibrate_alpha, gated_convolutions, sparse_execution

__all__ = [
    "BitrateModulator",
    "EnergyChannelGate",
    "GatedConv",
    "GatedConv2d",
    "GatedConvTranspose2d",
    "InplaceGDN",
    "LmbdaRange",
    "calibrate_alpha",
    "eca_kernel_size",
    "gated_convolutions",
    "gates_of",
    "insert_gates",
    "sparse_execution",
    "use_inplace_gdn",
]
