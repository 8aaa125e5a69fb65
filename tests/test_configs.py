"""Every recipe in configs/ parses into a TrainConfig and names a registry model;
the GPU queue's plan names recipes that exist."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from varicodec.models import ARCHITECTURES, parse_name
from varicodec.quality import QUALITY_LMBDAS
from varicodec.train import load_config

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "configs" / "gpu" / "queue.yaml"
# configs/baselines: recipes of scripts/vbr_baseline.py (tests/test_vbr_baseline.py)
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                 if p != PLAN and p.parent.name != "baselines")


def test_gpu_plan_is_well_formed():
    jobs = yaml.safe_load(PLAN.read_text())["jobs"]
    ids = [j["id"] for j in jobs]
    assert len(ids) == len(set(ids))
    for job in jobs:
        assert job.get("status", "pending") in ("pending", "done", "failed", "dropped")
        if job.get("status") == "dropped":
            assert job.get("reason"), job["id"]     # a dropped job says why
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


# ---------------------------------------------------------------- the paper's grid (issue 12)
PAPER = ROOT / "configs" / "paper"
UNIVERSAL = (192, 320)


def _grid(arch: str, *stages: str) -> list[tuple[Path, str]]:
    """(config, export) of every model ``scripts/paper_grid.sh`` trains for ``arch``, in order."""
    env = {**os.environ, "ARCH": arch, "DRY_RUN": "1"}
    env.pop("TRAIN_ARGS", None)
    out = subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), *stages], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = [line.split(" -> ") for line in out.splitlines()]
    return [(ROOT / cfg, Path(export).stem) for cfg, export in rows]


@pytest.mark.parametrize("arch", ["mean", "joint", "hyperprior-paper"])
def test_paper_grid_has_the_issue_sizes(arch):
    """8 base, 8 ecg, 8 extra at CompressAI's width of each quality, bm and ecgbm at
    N=192/M=320, one pre-training per width (or, for a base, an exported universal model of
    its width and architecture whose card is in git); every model starts from one trained
    earlier in the grid; every configs/paper/{arch}-*.yaml is in it."""
    grid = _grid(arch)
    registry_arch = arch.removesuffix("-paper")
    widths = ARCHITECTURES[registry_arch].widths[:8]
    pre = {p.stem.removeprefix(f"{arch}-pre-") for p, _ in grid if "-pre-" in p.stem}
    assert len(grid) == 8 * 3 + 2 + len(pre) and f"{UNIVERSAL[0]}x{UNIVERSAL[1]}" in pre
    own = {p for p in PAPER.glob(f"{arch}-*.yaml") if not p.stem.startswith(f"{arch}-128-")}
    assert {p for p, _ in grid} == own  # the smaller grid {arch}-128 is tested below
    assert len({e for _, e in grid}) == len(grid)
    trained: set[str] = set()
    for path, export in grid:
        cfg = load_config(path)
        a, variant = parse_name(cfg.model)
        assert a == registry_arch, path.name
        stage = path.stem.removeprefix(f"{arch}-")
        if stage.startswith("pre-"):
            assert variant == "bm" and cfg.init is None
            assert stage == f"pre-{cfg.N}x{cfg.M}"
        elif variant in ("bm", "ecgbm"):
            assert (cfg.N, cfg.M) == UNIVERSAL, path.name
            assert cfg.lmbda_range == [QUALITY_LMBDAS[0], QUALITY_LMBDAS[-1]]
        else:
            q = int(stage.split("-")[1].removeprefix("q"))
            assert (cfg.N, cfg.M) == widths[q - 1], path.name
            assert cfg.lmbda == pytest.approx(QUALITY_LMBDAS[q - 1])
            parent = f"pre-{cfg.N}x{cfg.M}" if stage == f"base-q{q}" else f"base-q{q}"
            if parent.startswith("pre-") and parent.removeprefix("pre-") not in pre:
                card = json.loads((ROOT / f"{cfg.init}.json").read_text())  # exported weights
                assert (card["arch"], card["variant"], card["N"], card["M"]) == (
                    registry_arch, "bm", cfg.N, cfg.M), path.name
                assert card["lmbda_range"] == [QUALITY_LMBDAS[0], QUALITY_LMBDAS[-1]]
                trained.add(cfg.init)
            else:
                assert cfg.init == f"runs/paper-{arch}-{parent}", path.name
        if variant in ("ecg", "ecgbm"):
            assert cfg.gamma > 0 and cfg.regularizer == "flops"
        assert cfg.name == f"paper-{path.stem}" and export.startswith(arch)
        if cfg.init is not None:  # its starting weights come from an earlier run of the grid
            assert cfg.init.removeprefix("runs/") in trained, path.name
        trained.add(cfg.name)


@pytest.mark.parametrize("arch, qualities, parent", [
    ("hyperprior-128", (6, 7, 8), "checkpoints/gpu/hyperprior-bm-128.safetensors"),
    ("mean-128", (5, 6, 7, 8), "checkpoints/paper/mean-bm-128-cpu.safetensors"),
    ("joint-128", tuple(range(1, 9)), "checkpoints/paper/joint-bm-128-cpu.safetensors"),
])
def test_paper_grid_smaller_grids(arch, qualities, parent):
    """ARCH=hyperprior-128 / mean-128: the qualities above the small width at N=128/M=192
    (not CompressAI's width there), and ARCH=joint-128 every quality (CompressAI's joint is
    never that narrow), folded with 0 steps from the universal model of that width like the
    small-width qualities, then ecg and extra from it."""
    grid = _grid(arch)
    assert {p for p, _ in grid} == set(PAPER.glob(f"{arch}-*.yaml"))
    assert len(grid) == 3 * len(qualities)
    assert json.loads((ROOT / f"{parent}.json").read_text())["N"] == 128  # its card is in git
    for path, export in grid:
        cfg = load_config(path)
        stage, q = path.stem.removeprefix(f"{arch}-"), int(path.stem.split("-q")[1][0])
        assert (cfg.N, cfg.M) == (128, 192) and q in qualities
        assert parse_name(cfg.model)[0] == arch.removesuffix("-128")
        assert cfg.lmbda == pytest.approx(QUALITY_LMBDAS[q - 1])
        assert cfg.name == f"paper-{path.stem}" and export.startswith(f"{arch}-")
        if stage == f"base-q{q}":
            assert cfg.init == parent and cfg.steps == 0
        else:
            assert cfg.init == f"runs/paper-{arch}-base-q{q}" and cfg.steps == 300
        if parse_name(cfg.model)[1] == "ecg":
            assert cfg.gamma > 0 and cfg.regularizer == "flops"


def test_paper_grid_hyperprior_is_issue_7s():
    """ARCH=hyperprior (the default) still names issue 7's configs, N=128/M=192 throughout."""
    grid = _grid("hyperprior")
    assert len(grid) == 8 * 3 + 1 + 2 + 3
    for path, _ in grid:
        cfg = load_config(path)
        assert parse_name(cfg.model)[0] == "hyperprior" and (cfg.N, cfg.M) == (128, 192)
    assert [p.name for p, _ in _grid("hyperprior", "pre")] == ["hyperprior-bm-cpu.yaml"]


def test_paper_grid_eval_stage_names_the_grids_sets():
    """`eval` evaluates the base, ecg and base-extra files of QUALITIES (labelled) and
    tables ecg against base-extra; issue 7's grid has its own page and is refused."""
    import shlex

    env = {**os.environ, "ARCH": "mean", "DRY_RUN": "1", "QUALITIES": "1 2 3 4"}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), "eval"], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    cmds = [shlex.split(line) for line in out.splitlines()]
    assert [c[1] for c in cmds] == ["eval", "eval", "eval", "table"]
    for cmd, v in zip(cmds, ["base", "ecg", "base-extra"]):
        models = cmd[cmd.index("--model") + 1:cmd.index("--model") + 5]
        assert models == [f"checkpoints/paper/mean-{v}-q{q}.safetensors" for q in (1, 2, 3, 4)]
        assert cmd[cmd.index("--label") + 1] == f"mean {v}"
        assert cmd[cmd.index("-o") + 1] == f"docs/results/paper/mean-{v}-q1-4.json"
    assert cmds[3][2:4] == ["docs/results/paper/mean-base-extra-q1-4.json",
                            "docs/results/paper/mean-ecg-q1-4.json"]
    env |= {"ARCH": "joint-128", "QUALITIES": "1 2 3 4 5 6 7 8"}  # a lineage of its own
    out = subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), "eval"], env=env,
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    labels = [shlex.split(line) for line in out.splitlines()][:3]
    assert [c[c.index("--label") + 1] for c in labels] == [
        f"joint-128 {v}" for v in ("base", "ecg", "base-extra")]
    env["ARCH"] = "hyperprior"
    assert subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), "eval"], env=env,
                          cwd=ROOT, capture_output=True).returncode == 2


def test_paper_grid_gamma_schedule_is_the_ablations():
    """``GAMMA=schedule`` gives each quality's ecg model the γ of the schedule that held
    sparsity at 0.47-0.50 (configs/paper/ablation-gammahalf-ecg-q*.yaml, session 22):
    γ_q = 90 · (λ_q/λ_1)^0.26; a number sets one γ; anything else is refused."""
    def ecg(gamma: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "ARCH": "hyperprior-paper", "DRY_RUN": "1", "GAMMA": gamma}
        return subprocess.run(["bash", str(ROOT / "scripts" / "paper_grid.sh"), "ecg"],
                              env=env, cwd=ROOT, capture_output=True, text=True)

    lines = ecg("schedule").stdout.splitlines()
    assert len(lines) == 8
    for q, line in enumerate(lines, start=1):
        gamma = float(line.rsplit("--set gamma=", 1)[1])
        ablation = load_config(PAPER / f"ablation-gammahalf-ecg-q{q}.yaml")
        assert gamma == ablation.gamma
        assert gamma == round(90 * (QUALITY_LMBDAS[q - 1] / QUALITY_LMBDAS[0]) ** 0.26)
        assert line.startswith(f"configs/paper/hyperprior-paper-ecg-q{q}.yaml -> ")
    assert all(line.endswith("--set gamma=40") for line in ecg("40").stdout.splitlines())
    bad = ecg("lots")
    assert bad.returncode == 2 and "GAMMA must be a number" in bad.stderr and not bad.stdout
