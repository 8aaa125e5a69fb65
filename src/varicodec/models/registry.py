"""The architecture registry: the one place that says which models exist.

Each :class:`Architecture` entry holds everything the package knows about one
CompressAI architecture — how to build it, CompressAI's channel widths per
quality, its append-only ``.vcd`` model ids, its published Kodak curve and the
submodules the gates must leave alone. Every entry comes in the four
:data:`VARIANTS`, named ``{arch}-{variant}`` (``create_model("hyperprior-ecgbm")``).
``codec.format`` (model ids), ``VaricodecModel`` (construction, ungated
layers), ``varicodec plot/table --reference`` and the tests read it from here.

Adding an architecture is one :func:`register` call below plus its tests
(``tests/test_registry.py`` shows it for ``cheng2020-anchor``).

Listing names, reading an entry and finding bundled weights import no torch (the
command line's ``varicodec models`` and ``varicodec info`` use them); building a
model does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..quality import KODAK_CURVES

if TYPE_CHECKING:
    from .codec_model import VaricodecModel

__all__ = [
    "ARCHITECTURES",
    "VARIANTS",
    "WEIGHTS_DIR",
    "Architecture",
    "architecture",
    "bundled_weights",
    "create_model",
    "list_models",
    "parse_name",
    "register",
    "variant_flags",
]

#: variant → (gated, variable-rate); every architecture comes in all four
VARIANTS: dict[str, tuple[bool, bool]] = {
    "base": (False, False),
    "ecg": (True, False),
    "bm": (False, True),
    "ecgbm": (True, True),
}

#: trained weights that ship inside the package: ``<name>.safetensors``
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


@dataclass(frozen=True)
class Architecture:
    """One registry entry.

    Attributes:
        name: registry prefix (``"hyperprior"``); model names are ``{name}-{variant}``.
        compressai_name: CompressAI's name of the architecture and of its published
            curve (``"bmshj2018-hyperprior"``).
        build: ``build(N, M)`` → the CompressAI network (imports torch when called).
        widths: CompressAI's ``(N, M)`` per quality 1..k; quality 1's are the defaults.
        format_ids: ``.vcd`` model id of each variant, in :data:`VARIANTS` order.
            Part of the file format: never change or reuse one, only append.
        ungated: submodules left dense by the gates (they decode position by
            position, where a gate over the whole latent cannot be evaluated).
        autoregressive: the latent is coded position by position with a context
            model (the coder's symbols then follow the mean-centred quantisation).
    """

    name: str
    compressai_name: str
    build: Callable[[int, int], Any]
    widths: tuple[tuple[int, int], ...]
    format_ids: tuple[int, int, int, int]
    ungated: tuple[str, ...] = ()
    autoregressive: bool = False

    @property
    def default_widths(self) -> tuple[int, int]:
        return self.widths[0]

    @property
    def reference(self) -> tuple[tuple[float, float], ...]:
        """CompressAI's published Kodak curve, quality 1..k → ``(bpp, psnr_db)``."""
        return KODAK_CURVES[self.compressai_name]

    def model_names(self) -> list[str]:
        return [f"{self.name}-{v}" for v in VARIANTS]


#: registry prefix → entry, in registration order
ARCHITECTURES: dict[str, Architecture] = {}


def register(arch: Architecture) -> Architecture:
    """Add ``arch`` to the registry; its name and format ids must be new."""
    if arch.name in ARCHITECTURES:
        raise ValueError(f"architecture {arch.name!r} is already registered")
    taken = {i for a in ARCHITECTURES.values() for i in a.format_ids}
    if len(arch.format_ids) != len(VARIANTS) or len(set(arch.format_ids)) != len(VARIANTS) \
            or taken & set(arch.format_ids) or not all(0 < i < 256 for i in arch.format_ids):
        raise ValueError(f"{arch.name}: format ids must be {len(VARIANTS)} new bytes 1..255")
    if arch.compressai_name not in KODAK_CURVES:
        raise ValueError(f"{arch.name}: no published curve {arch.compressai_name!r}")
    ARCHITECTURES[arch.name] = arch
    return arch


# -------------------------------------------------------------- constructors
# Each adapter imports CompressAI when called, so that the registry stays torch-free.
def _scale_hyperprior(N: int, M: int) -> Any:
    from compressai.models import ScaleHyperprior

    return ScaleHyperprior(N=N, M=M)


def _mean_scale_hyperprior(N: int, M: int) -> Any:
    from compressai.models import MeanScaleHyperprior

    return MeanScaleHyperprior(N=N, M=M)


def _joint(N: int, M: int) -> Any:
    from compressai.models import JointAutoregressiveHierarchicalPriors

    return JointAutoregressiveHierarchicalPriors(N=N, M=M)


def _cheng2020_anchor(N: int, M: int) -> Any:
    if M != N:
        raise ValueError(f"cheng2020-anchor has one width (M = N), got N={N}, M={M}")
    from compressai.models import Cheng2020Anchor

    return Cheng2020Anchor(N=N)


_CONTEXT = ("context_prediction", "entropy_parameters")
_LOW, _HIGH = (128, 192), (192, 320)

register(Architecture("hyperprior", "bmshj2018-hyperprior", _scale_hyperprior,
                      (_LOW,) * 5 + (_HIGH,) * 3, (1, 2, 3, 4)))
register(Architecture("mean", "mbt2018-mean", _mean_scale_hyperprior,
                      (_LOW,) * 4 + (_HIGH,) * 4, (5, 6, 7, 8)))
register(Architecture("joint", "mbt2018", _joint,
                      ((192, 192),) * 4 + (_HIGH,) * 4, (9, 10, 11, 12),
                      ungated=_CONTEXT, autoregressive=True))
register(Architecture("cheng2020-anchor", "cheng2020-anchor", _cheng2020_anchor,
                      ((128, 128),) * 3 + ((192, 192),) * 3, (13, 14, 15, 16),
                      ungated=_CONTEXT, autoregressive=True))


# ------------------------------------------------------------------- names
def list_models() -> list[str]:
    """Every registry name, ``{arch}-{variant}``, architectures in registration order."""
    return [n for a in ARCHITECTURES.values() for n in a.model_names()]


def parse_name(name: str) -> tuple[str, str]:
    """``"cheng2020-anchor-ecg"`` → ``("cheng2020-anchor", "ecg")``; ``ValueError`` if unknown."""
    arch, sep, variant = name.rpartition("-")
    if not sep or arch not in ARCHITECTURES or variant not in VARIANTS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    return arch, variant


def architecture(name: str) -> Architecture:
    """The entry of an architecture (``"joint"``) or of a model name (``"joint-ecg"``)."""
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]
    return ARCHITECTURES[parse_name(name)[0]]


def variant_flags(name: str) -> tuple[bool, bool]:
    """``(gated, variable-rate)`` of a model name."""
    return VARIANTS[parse_name(name)[1]]


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
