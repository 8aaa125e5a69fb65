"""Every recipe in configs/ parses into a TrainConfig and names a registry model."""

from pathlib import Path

import pytest

from varicodec.models import parse_name
from varicodec.train import load_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_recipes_exist():
    assert len(RECIPES) >= 30


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_loads(path):
    cfg = load_config(path)
    arch, variant = parse_name(cfg.model)
    if variant in ("bm", "ecgbm"):
        assert cfg.lmbda_range[0] < cfg.lmbda_range[1]
    if variant in ("ecg", "ecgbm") and path.parent.name == "paper":
        assert cfg.gamma > 0
