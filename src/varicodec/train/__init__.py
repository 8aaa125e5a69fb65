"""Training: recipes, data, the loop, checkpoints and export."""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
