"""Moved to :mod:`varicodec.layers.sparse`, beside the gated convolutions; this name
stays so that old imports keep working."""

from .layers.sparse import GatedConv, calibrate_alpha, gated_convolutions, sparse_execution

__all__ = ["GatedConv", "calibrate_alpha", "gated_convolutions", "sparse_execution"]
