"""Every recipe in configs/ parses into a TrainConfig and names a registry model;
the GPU queue's plan names recipes that exist."""

from pathlib import Path

import pytest
import yaml

from varicodec.models import parse_name
from varicodec.train import load_config

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "configs" / "gpu" / "queue.yaml"
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if p != PLAN)


def test_gpu_plan_is_well_formed():
    jobs = yaml.safe_load(PLAN.read_text())["jobs"]
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids))
    for job in jobs:
        assert job.get("status", "pending") in ("pending", "done", "failed")
        assert ("command" in job) != ("line" in job), job["id"]
        if "line" in job:
            cfg = load_config(ROOT / job["config"])
            assert cfg.time_budget_minutes, job["id"]
            assert float(job["minutes"]) * 60 + job.get("overhead_s", 45) < 600, job["id"]


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
