"""Model registry: ``create_model("hyperprior-ecgbm", N=..., M=...)``."""

from __future__ import annotations

from .codec_model import ARCHITECTURES, VARIANTS, VaricodecModel

__all__ = ["create_model", "list_models", "parse_name"]


def list_models() -> list[str]:
    """The twelve registry names, ``{arch}-{variant}``."""
    return [f"{a}-{v}" for a in ARCHITECTURES for v in VARIANTS]


def parse_name(name: str) -> tuple[str, str]:
    arch, sep, variant = name.partition("-")
    if not sep or arch not in ARCHITECTURES or variant not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return arch, variant


def create_model(name: str, **config) -> VaricodecModel:
    """Build a model by registry name, e.g. ``create_model("joint-ecg", N=64, M=96)``.

    ``config`` takes the keyword arguments of :class:`VaricodecModel` (N, M, lmbda,
    lmbda_range, lmbda_ref, gate, bm_hidden). The weights are freshly initialised;
    use :func:`varicodec.load_model` for trained ones.
    """
    arch, variant = parse_name(name)
    config.pop("arch", None)
    config.pop("variant", None)
    return VaricodecModel(arch, variant, **config)
