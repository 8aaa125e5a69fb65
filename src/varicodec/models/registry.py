"""Model registry: ``create_model("hyperprior-ecgbm", N=..., M=...)``, and which names
have trained weights bundled with the package.

Listing names and finding bundled weights import no torch (the command line's
``varicodec models`` uses them); building a model does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .codec_model import VaricodecModel

__all__ = ["WEIGHTS_DIR", "bundled_weights", "create_model", "list_models", "parse_name"]

#: the registry's architecture and variant names, in ``codec_model.ARCHITECTURES`` /
#: ``VARIANTS`` order (kept here so that listing names needs no torch; a test pins them)
ARCH_NAMES = ("hyperprior", "mean", "joint")
VARIANT_NAMES = ("base", "ecg", "bm", "ecgbm")

#: trained weights that ship inside the package: ``<name>.safetensors``
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def list_models() -> list[str]:
    """The twelve registry names, ``{arch}-{variant}``."""
    return [f"{a}-{v}" for a in ARCH_NAMES for v in VARIANT_NAMES]


def parse_name(name: str) -> tuple[str, str]:
    arch, sep, variant = name.partition("-")
    if not sep or arch not in ARCH_NAMES or variant not in VARIANT_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return arch, variant


def bundled_weights(name: str) -> Path | None:
    """The weights file bundled for registry name ``name``, or ``None`` if there is none."""
    parse_name(name)
    path = WEIGHTS_DIR / f"{name}.safetensors"
    return path if path.is_file() else None


def create_model(name: str, **config) -> VaricodecModel:
    """Build a model by registry name, e.g. ``create_model("joint-ecg", N=64, M=96)``.

    ``config`` takes the keyword arguments of :class:`VaricodecModel` (N, M, lmbda,
    lmbda_range, lmbda_ref, gate, bm_hidden). The weights are freshly initialised;
    use :func:`varicodec.load_model` for trained ones.
    """
    from .codec_model import VaricodecModel

    arch, variant = parse_name(name)
    config.pop("arch", None)
    config.pop("variant", None)
    return VaricodecModel(arch, variant, **config)
