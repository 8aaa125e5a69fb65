"""The fast training path: in-memory crops, time budgets, warm-up, autocast, the GPU queue."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny
from PIL import Image

from varicodec.train import TrainConfig, load_config
from varicodec.train.loop import _lr_factor
from varicodec.train.memdata import InMemoryCrops

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(96, 80), (120, 70), (70, 100)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
            folder / f"im{i}.png")
    Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def test_in_memory_crops(images, capsys):
    crops = InMemoryCrops(images, crop=64, scale=(0.5, 1.0), seed=3)
    err = capsys.readouterr().err
    assert "3 training images in memory" in err and "1 skipped" in err and "broken.jpg" in err
    a, b = crops.batch(0, 5), crops.batch(0, 5)
    assert a.shape == (5, 3, 64, 64) and a.dtype == torch.float32
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    assert torch.equal(a, b)                        # batch k depends on (seed, k) only
    assert not torch.equal(a, crops.batch(1, 5))
    other = InMemoryCrops(images, crop=64, seed=4, verbose=False)
    assert not torch.equal(a, other.batch(0, 5))


def test_in_memory_crops_without_scaling_are_exact_pixels(images):
    crops = InMemoryCrops(images, crop=64, scale=(1.0, 1.0), seed=0, verbose=False)
    x = crops.batch(2, 4) * 255
    assert torch.allclose(x, x.round(), atol=1e-3)   # no resampling: original 8-bit values


def test_in_memory_crops_refuse_empty(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(ValueError, match="no usable training images"):
        InMemoryCrops(tmp_path / "e", crop=64, verbose=False)


def test_lr_schedule_time_budget_and_warmup():
    cfg = TrainConfig(steps=1000, lr_decay_at=[0.5, 0.9], lr_decay=0.1)
    assert _lr_factor(cfg, 0) == 1.0 and _lr_factor(cfg, 600) == pytest.approx(0.1)
    timed = TrainConfig(steps=10**6, time_budget_minutes=10, lr_decay_at=[0.5, 0.9])
    assert _lr_factor(timed, 5, seconds=100) == 1.0
    assert _lr_factor(timed, 5, seconds=301) == pytest.approx(0.1)
    assert _lr_factor(timed, 5, seconds=541) == pytest.approx(0.01)
    warm = TrainConfig(steps=1000, lr_warmup_steps=100)
    assert _lr_factor(warm, 0) == pytest.approx(0.01)
    assert _lr_factor(warm, 49) == pytest.approx(0.5) and _lr_factor(warm, 500) == 1.0


def test_set_values_override_with_none(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "amp": "bf16", "steps": 5}))
    assert load_config(path).amp == "bf16"
    assert load_config(path, amp=None).amp == "bf16"          # unset option: ignored
    assert load_config(path, set_values={"amp": None}).amp is None
    with pytest.raises(ValueError, match="unknown recipe keys"):
        load_config(path, set_values={"ampp": None})
    path.write_text(yaml.safe_dump({"amp": "fp8"}))
    with pytest.raises(ValueError, match="amp must be bf16"):
        load_config(path)


def test_recipe_values_are_typed(tmp_path):
    """YAML 1.1 reads 1e-5 (no dot) as a string: a float key takes it as the number; a
    value of the wrong type is a one-line error naming the key, not a failure mid-training."""
    path = tmp_path / "r.yaml"
    path.write_text("lr: 1e-5\nlmbda_range: [1e-3, 0.18]\nsteps: 5\n")
    cfg = load_config(path, set_values={"gate_lr": "2e-3"})
    assert (cfg.lr, cfg.lmbda_range, cfg.gate_lr) == (1e-5, [1e-3, 0.18], 2e-3)
    assert isinstance(cfg.lmbda_range[0], float)
    assert load_config(path, set_values={"lr": 1}).lr == 1.0
    for key, value, message in [("lr", "fast", "lr must be a number"),
                                ("steps", 2.5, "steps must be an integer"),
                                ("steps", True, "steps must be an integer"),
                                ("lmbda", None, "lmbda cannot be null"),
                                ("scale", 0.5, "scale must be a list"),
                                ("channels_last", "yes", "channels_last must be true or false")]:
        with pytest.raises(ValueError, match=message):
            load_config(path, set_values={key: value})


@pytest.mark.parametrize("name", ["hyperprior-bm", "mean-ecgbm"])
def test_autocast_keeps_entropy_models_float32(name):
    model = tiny(name).train()
    x = torch.rand(2, 3, 64, 64)
    lm = torch.tensor([0.002, 0.1])
    torch.manual_seed(1)
    ref = model(x, lmbda=lm)
    model.set_autocast(torch.bfloat16)
    torch.manual_seed(1)
    out = model(x, lmbda=lm)
    assert out["x_hat"].dtype == torch.float32
    assert all(v.dtype == torch.float32 for v in out["likelihoods"].values())
    assert (out["x_hat"] - ref["x_hat"]).abs().max() < 0.05   # close, not equal
    model.set_autocast(None)
    torch.manual_seed(1)
    back = model(x, lmbda=lm)
    assert torch.equal(back["x_hat"], ref["x_hat"])            # plain modules restored


def _tiny_recipe(tmp_path, images, **kw):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    cfg.update(train_dir=str(images), val_dir=str(images), out_dir=str(tmp_path / "runs"),
               data_in_memory=True, **kw)
    path = tmp_path / "fast.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_in_memory_time_budget_and_resume(tmp_path, images):
    from varicodec.cli import main
    from varicodec.train.checkpoint import load_checkpoint

    recipe = _tiny_recipe(tmp_path, images, steps=10**6, val_every=10**6, channels_last=True)
    assert main(["train", "--config", str(recipe), "--time-budget", "0.02",
                 "--set", "amp=bf16"]) == 0
    ckpt = tmp_path / "runs" / "tiny-test" / "checkpoint.safetensors"
    _, _, meta = load_checkpoint(ckpt)
    assert meta["step"] >= 1 and meta["train_seconds"] >= 1.2
    assert meta["recipe"]["amp"] == "bf16" and meta["recipe"]["time_budget_minutes"] == 0.02
    assert meta["history"] and meta["history"][-1]["step"] == meta["step"]  # validated at end
    assert "rd_loss" in meta["history"][-1]["points"][0]
    step = meta["step"]
    assert main(["train", "--config", str(recipe), "--resume", "--time-budget", "0.04"]) == 0
    _, _, meta = load_checkpoint(ckpt)
    assert meta["step"] > step and meta["train_seconds"] >= 2.4


def test_set_rejects_malformed(tmp_path, images, capsys):
    from varicodec.cli import main

    recipe = _tiny_recipe(tmp_path, images)
    assert main(["train", "--config", str(recipe), "--set", "amp"]) != 0
    assert "KEY=VALUE" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--set", "lr=fast"]) != 0
    err = capsys.readouterr().err
    assert "lr must be a number" in err and "Traceback" not in err


@pytest.mark.slow
def test_gpu_queue_runs_and_collects(tmp_path, images):
    """The queue end to end on the CPU: a command job, a train job, collect."""
    lines = tmp_path / "lines"
    lines.mkdir()
    model = tiny("hyperprior-bm")
    model.update(force=True)
    from varicodec.models import save_model

    save_model(model, lines / "tiny-bm.safetensors")
    recipe = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    recipe.update(model="hyperprior-bm", name="x", train_dir=str(images), val_dir=str(images),
                  data_in_memory=True, steps=10**6, val_every=10**6, gamma=0.0)
    (tmp_path / "tiny-bm.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "tiny-wide.yaml").write_text(yaml.safe_dump({**recipe, "N": 20, "M": 24}))
    (tmp_path / "tiny-mean.yaml").write_text(yaml.safe_dump({**recipe, "model": "mean-bm"}))
    plan = tmp_path / "queue.yaml"
    plan.write_text("# a test plan\n" + yaml.safe_dump({"jobs": [
        {"id": "j-cmd", "command": "python -c \"open('$LOGS/hello.txt','w').write('hi')\"",
         "minutes": 0.1, "overhead_s": 0, "status": "pending"},
        {"id": "j-train", "line": "tiny-bm", "config": str(tmp_path / "tiny-bm.yaml"),
         "minutes": 0.03, "min_minutes": 0.01, "overhead_s": 5, "status": "pending"},
        {"id": "j-wide", "line": "tiny-wide", "config": str(tmp_path / "tiny-wide.yaml"),
         "widen_from": "line:tiny-bm", "minutes": 0.03, "min_minutes": 0.01, "overhead_s": 5,
         "status": "pending"},
        {"id": "j-mean", "line": "tiny-mean", "config": str(tmp_path / "tiny-mean.yaml"),
         "parts_from": "line:tiny-bm", "parts": ["g_a", "g_s", "modulator", "demodulator"],
         "minutes": 0.03, "min_minutes": 0.01, "overhead_s": 5, "status": "pending"},
        {"id": "j-steps", "line": "tiny-bm-extra", "config": str(tmp_path / "tiny-bm.yaml"),
         "init": "line:tiny-bm", "steps": 3, "minutes": 0.5, "overhead_s": 5,
         "status": "pending"},
        {"id": "j-uncarried", "line": "tiny-bm", "config": str(tmp_path / "tiny-bm.yaml"),
         "init": str(tmp_path / "absent.safetensors"), "minutes": 0.03, "overhead_s": 5,
         "status": "pending"},
        {"id": "j-late", "command": "true", "minutes": 100, "status": "pending"},
    ]}))
    out = tmp_path / "out"
    script = [sys.executable, str(ROOT / "scripts/gpu_queue.py"), "--plan", str(plan),
              "--lines", str(lines), "--runs-doc", str(tmp_path / "doc")]
    subprocess.run(script + ["run", "--deadline", "300", "--out", str(out)], check=True)
    assert (out / "tiny-bm.safetensors").is_file() and (out / "logs.tar.gz").is_file()
    subprocess.run(script + ["collect", str(out)], check=True)
    jobs = {j["id"]: j for j in yaml.safe_load(plan.read_text())["jobs"]}
    assert plan.read_text().startswith("# a test plan")
    assert jobs["j-cmd"]["status"] == "done" and jobs["j-train"]["status"] == "done"
    assert jobs["j-train"]["result"]["steps"] >= 1
    assert jobs["j-late"]["status"] == "pending"           # did not fit: stays queued
    assert jobs["j-uncarried"]["status"] == "pending"      # its weights did not travel
    assert jobs["j-wide"]["status"] == "done"              # a new line grown from tiny-bm
    wide = json.loads((lines / "tiny-wide.safetensors.json").read_text())
    assert (wide["N"], wide["M"]) == (20, 24)
    assert [e["run"] for e in wide["lineage"]][-2:] == ["widen", "j-wide"]
    assert jobs["j-mean"]["status"] == "done"              # a mean line from bm's transforms
    mean = json.loads((lines / "tiny-mean.safetensors.json").read_text())
    assert mean["recipe"]["init_parts"] == ["g_a", "g_s", "modulator", "demodulator"]
    window = next((tmp_path / "doc").iterdir())
    assert (window / "hello.txt").read_text() == "hi"
    report = json.loads((window / "report.json").read_text())
    assert [j["id"] for j in report["jobs"]] == ["j-cmd", "j-train", "j-wide", "j-mean",
                                                 "j-steps", "j-uncarried", "j-late"]
    assert jobs["j-steps"]["result"]["steps"] == 3             # step-matched, not timed
    extra = json.loads((lines / "tiny-bm-extra.safetensors.json").read_text())
    assert extra["lineage"][-1] == {"run": "j-steps", "model": "hyperprior-bm", "steps": 3}
    card = json.loads((lines / "tiny-bm.safetensors.json").read_text())
    assert card["lineage"][-1]["run"] == "j-train"


def test_autocast_with_float32_output_layers():
    model = tiny("hyperprior-ecgbm").train()
    x = torch.rand(2, 3, 64, 64)
    lm = torch.tensor([0.002, 0.1])
    seen = {}

    def hook(name):
        return lambda m, i, o: seen.__setitem__(name, o.dtype)

    last = [m for m in model.net.g_a.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    first = [m for m in model.net.g_a.modules() if isinstance(m, torch.nn.Conv2d)][0]
    last.register_forward_hook(hook("last"))
    first.register_forward_hook(hook("first"))
    model.set_autocast(torch.bfloat16)
    model(x, lmbda=lm)
    assert seen == {"first": torch.bfloat16, "last": torch.bfloat16}
    model.set_autocast(torch.bfloat16, fp32_output_layers=True)
    out = model(x, lmbda=lm)
    assert seen == {"first": torch.bfloat16, "last": torch.float32}
    assert out["x_hat"].dtype == torch.float32
    model.set_autocast(None)
    model(x, lmbda=lm)
    assert seen == {"first": torch.float32, "last": torch.float32}
    assert "forward" not in last.__dict__


def test_train_progress_lines_in_a_log(tmp_path, images, capsys, monkeypatch):
    import varicodec.progress as progress
    from varicodec.cli import main

    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)
    recipe = _tiny_recipe(tmp_path, images, steps=4, val_every=10**6)
    assert main(["train", "--config", str(recipe)]) == 0
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("tiny-test: ") and "steps/s" in x]
    assert lines and "/4 steps" in lines[-1] and "\r" not in err
    recipe = _tiny_recipe(tmp_path, images, steps=10**6, val_every=10**6, name="timed")
    assert main(["train", "--config", str(recipe), "--time-budget", "0.01"]) == 0
    err = capsys.readouterr().err
    assert any(x.startswith("timed: ") and "steps/s" in x and "ETA" not in x
               for x in err.splitlines())


def test_gpu_queue_window_jobs_follow_the_runners_rule():
    """slim keeps the weights of the jobs a window reaches: the runner's own schedule."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_queue", ROOT / "scripts/gpu_queue.py")
    q = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(q)
    jobs = [{"id": "a", "line": "x", "minutes": 6.0, "min_minutes": 2.0},
            {"id": "b", "command": "true", "minutes": 1.5, "overhead_s": 0},
            {"id": "c", "line": "y", "minutes": 7.0, "min_minutes": 2.0},
            {"id": "d", "command": "true", "minutes": 0.2, "overhead_s": 0}]
    assert [j["id"] for j in q.window_jobs(jobs, 540)] == ["a", "b", "d"]
    assert [j["id"] for j in q.window_jobs(jobs, 900)] == ["a", "b", "c"]   # c takes the rest
    assert [j["id"] for j in q.window_jobs(jobs, 1000)] == ["a", "b", "c", "d"]
    assert [j["id"] for j in q.window_jobs(jobs, 100)] == ["b"]            # a needs 165 s


def test_frozen_modules_do_not_train():
    """``frozen: [g_a, g_s]``: an entropy model trained on fixed transforms."""
    from varicodec.losses import RateDistortionLoss
    from varicodec.train.loop import make_optimizers, sample_lmbda, train_step

    model = tiny("mean-bm").train()
    cfg = TrainConfig(model="mean-bm", N=16, M=16, frozen=["g_a", "g_s"])
    opt, aux_opt = make_optimizers(model, cfg)
    in_groups = {id(p) for g in opt.param_groups for p in g["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.rand(2, 3, 64, 64)
    train_step(model, model, RateDistortionLoss(), opt, aux_opt, x,
               sample_lmbda(cfg, model, 2))
    for n, p in model.named_parameters():
        if n.startswith(("net.g_a.", "net.g_s.")):
            assert id(p) not in in_groups and not p.requires_grad
            assert torch.equal(p, before[n]), n
    assert not torch.equal(model.net.h_a[0].weight, before["net.h_a.0.weight"])
    with pytest.raises(ValueError, match="names no module"):
        make_optimizers(tiny("mean-bm"), TrainConfig(model="mean-bm", frozen=["g_x"]))
