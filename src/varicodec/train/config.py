"""Training recipes: YAML files in ``configs/`` mapped onto :class:`TrainConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

__all__ = ["TrainConfig", "load_config"]


@dataclass
class TrainConfig:
    """A complete training recipe. Every field can be set in the YAML file.

    λ: a fixed-rate model (``base``/``ecg``) trains at ``lmbda``; a variable-rate
    one (``bm``/``ecgbm``) samples λ per example log-uniformly over
    ``lmbda_range`` (or uniformly from the set ``lmbdas`` when given).
    """

    name: str = "run"
    model: str = "hyperprior-base"
    N: int | None = None
    M: int | None = None
    lmbda: float = 0.0130
    lmbda_range: list[float] = field(default_factory=lambda: [0.0018, 0.18])
    lmbdas: list[float] | None = None
    lmbda_ref: float | None = None
    gate: dict = field(default_factory=dict)
    # sparsity regulariser
    gamma: float = 0.0
    regularizer: str = "alpha"          # "alpha" (paper), "sparsity" (per layer) or "flops"
    alpha_target: float = 1.0
    sparsity_target: float = 0.5
    gamma_warmup_steps: int = 0          # γ ramps linearly from 0 over these steps
    # layer-by-layer distillation from the dense model (varicodec.train.distill)
    distill: float = 0.0                 # weight β of Σ_l |f_l − t_l|² / |t_l|² (0: off)
    teacher: str | None = None           # the dense teacher's weights (default: init)
    # data
    train_dir: str = "../shared/data/train"
    val_dir: str = "../shared/data/val"
    crop: int = 256
    scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    batch_size: int = 8
    workers: int = 2
    data_in_memory: bool = False         # decode the training set once; cut crops on the device
    # speed (GPU): bf16 transforms (entropy models stay float32), channels_last tensors
    amp: str | None = None               # None, "bf16" or "bf16-inner" (output layers float32)
    channels_last: bool = False
    compile: bool = False                # torch.compile the transforms (GPU; minutes to build)
    # optimisation
    steps: int = 10000
    time_budget_minutes: float | None = None  # stop here; lr decays then follow elapsed time
    lr: float = 1e-4
    gate_lr: float = 1e-2                # α and cross-channel kernels
    modulator_lr: float = 1e-3
    aux_lr: float = 1e-3
    clip_grad: float = 1.0
    lr_decay_at: list[float] = field(default_factory=lambda: [0.8, 0.95])  # fractions of steps
    lr_decay: float = 0.1
    lr_warmup_steps: int = 0             # linear ramp: a fresh optimiser on trained weights
    seed: int = 0
    threads: int | None = None
    # bookkeeping
    checkpoint_minutes: float = 5.0
    val_every: int = 500
    val_images: int = 8
    val_crop: int = 256
    val_real_images: int = 2
    log_every: int = 10
    init: str | None = None              # weights to start from (staged schedule)
    frozen: list[str] | None = None      # modules not trained, e.g. [g_a, g_s]: train an
                                         # entropy model on fixed, trained transforms
    init_parts: list[str] | None = None  # take only these modules from init, e.g. [g_a, g_s,
                                         # modulator, demodulator]: another architecture's
                                         # transforms; the rest keeps its fresh init
    out_dir: str = "runs"

    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.name

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_config(path: str | Path, set_values: dict | None = None, **overrides) -> TrainConfig:
    """Read a YAML recipe; unknown keys are an error (typos must not pass silently).

    ``overrides`` that are ``None`` are ignored (unset command-line options);
    ``set_values`` are applied as given, ``None`` included.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such recipe: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of keys to values")
    data.update({k: v for k, v in overrides.items() if v is not None})
    data.update(set_values or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown recipe keys {unknown}")
    cfg = TrainConfig(**{k: _typed(k, v, path) for k, v in data.items()})
    if cfg.amp not in (None, "bf16", "bf16-inner"):
        raise ValueError(f"{path}: amp must be bf16, bf16-inner or absent, got {cfg.amp!r}")
    return cfg


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(TrainConfig)}


def _number(key: str, value, kind: type, path: Path):
    """``value`` as ``kind`` (int or float). YAML 1.1 reads ``1e-5`` (no dot) as a string,
    so a float key takes a numeric string too; a bool is never a number."""
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise ValueError(f"{path}: {key} must be {'an integer' if kind is int else 'a number'}, "
                         f"got {value!r}")
    return kind(value)


def _typed(key: str, value, path: Path):
    """A recipe value checked against (and for numbers coerced to) its field's type."""
    annotation = _FIELD_TYPES[key].replace(" | None", "")
    if value is None:
        if _FIELD_TYPES[key] == annotation:
            raise ValueError(f"{path}: {key} cannot be null")
        return None
    if annotation in ("int", "float"):
        return _number(key, value, int if annotation == "int" else float, path)
    if annotation.startswith("list["):
        if not isinstance(value, list):
            raise ValueError(f"{path}: {key} must be a list, got {value!r}")
        if annotation == "list[float]":
            return [_number(key, v, float, path) for v in value]
        return [str(v) for v in value]
    if annotation == "bool" and not isinstance(value, bool):
        raise ValueError(f"{path}: {key} must be true or false, got {value!r}")
    if annotation == "dict" and not isinstance(value, dict):
        raise ValueError(f"{path}: {key} must be a mapping, got {value!r}")
    if annotation == "str" and not isinstance(value, str):
        raise ValueError(f"{path}: {key} must be a string, got {value!r}")
    return value
