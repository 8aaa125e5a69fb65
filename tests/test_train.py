"""`varicodec train` / `export` on a tiny recipe: run, resume, export, code."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_images
from PIL import Image

from varicodec.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_dir(tmp_path):
    """Six small generated images (plus one too small, one unreadable)."""
    folder = write_images(tmp_path / "images", 6, (96, 80), detail=12)
    Image.open(folder / "im5.png").resize((40, 40)).save(folder / "small.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    return folder


def _recipe(tmp_path, data_dir, **kw):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    cfg.update(train_dir=str(data_dir), val_dir=str(data_dir),
               out_dir=str(tmp_path / "runs"), **kw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_resume_export(tmp_path, data_dir, capsys):
    recipe = _recipe(tmp_path, data_dir, steps=3)
    assert main(["train", "--config", str(recipe)]) == 0
    err = capsys.readouterr().err
    assert "6 training images, 1 skipped (smaller than the 64px crop)" in err
    assert "1 unreadable skipped: broken.jpg" in err
    run = tmp_path / "runs" / "tiny-test"
    assert (run / "checkpoint.safetensors").is_file()
    # a second start without --resume refuses to clobber the run
    assert main(["train", "--config", str(recipe)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--config", str(recipe), "--resume", "--steps", "5"]) == 0
    log = (run / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and log[-1].startswith("5,")
    out = tmp_path / "m.safetensors"
    assert main(["export", str(run), "--out", str(out)]) == 0
    from varicodec import load_model

    model = load_model(out)
    assert model.card["steps"] == 5 and model.card["variant"] == "ecgbm"
    assert model.card["validation"]["points"][0]["bpp_real"] > 0
    x = torch.rand(1, 3, 64, 64)
    c = model.compress(x, lmbda=0.01)
    assert model.decompress(c["strings"], c["shape"], c["lmbda_code"])["x_hat"].shape == x.shape


def test_train_process_exits_with_loader_workers(tmp_path, data_dir):
    """A finished run's process exits: its DataLoader workers (which ignore SIGTERM) are
    stopped by train(), not left to multiprocessing's exit handler, which SIGTERMs and then
    joins them forever (the process hung after "finished at step N")."""
    recipe = _recipe(tmp_path, data_dir, steps=1, workers=1)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "varicodec", "train", "--config", str(recipe)],
                       capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "finished at step 1" in r.stderr


def test_resume_continues_identically(tmp_path, data_dir):
    """3 + 3 steps with a stop in between equal 6 steps straight."""
    a = _recipe(tmp_path, data_dir, steps=6, name="straight", val_every=100)
    assert main(["train", "--config", str(a)]) == 0
    b = _recipe(tmp_path, data_dir, steps=3, name="split", val_every=100)
    assert main(["train", "--config", str(b)]) == 0
    assert main(["train", "--config", str(b), "--resume", "--steps", "6"]) == 0
    from varicodec.train.checkpoint import load_checkpoint

    sa, _, _ = load_checkpoint(tmp_path / "runs" / "straight" / "checkpoint.safetensors")
    sb, _, _ = load_checkpoint(tmp_path / "runs" / "split" / "checkpoint.safetensors")
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sa[k], sb[k], atol=1e-5, rtol=1e-4, msg=k)


def test_staged_init_folds_and_records_lineage(tmp_path, data_dir):
    """bm → base (modulator folded in at the base λ) → ecg; the card lists the chain."""
    import json

    runs = tmp_path / "runs"
    bm = _recipe(tmp_path, data_dir, steps=2, name="bm", model="hyperprior-bm")
    assert main(["train", "--config", str(bm)]) == 0
    base = _recipe(tmp_path, data_dir, steps=1, name="base", model="hyperprior-base",
                   lmbda=0.01)
    assert main(["train", "--config", str(base), "--init", str(runs / "bm")]) == 0
    ecg = _recipe(tmp_path, data_dir, steps=1, name="ecg", model="hyperprior-ecg", lmbda=0.01)
    assert main(["train", "--config", str(ecg), "--init", str(runs / "base")]) == 0
    # resumed without --init (the recipe has none): the run keeps its start in the lineage
    assert main(["train", "--config", str(ecg), "--resume", "--steps", "2"]) == 0
    out = tmp_path / "ecg.safetensors"
    assert main(["export", str(runs / "ecg"), "--out", str(out)]) == 0
    card = json.loads(Path(str(out) + ".json").read_text())
    assert [(link["run"], link["steps"]) for link in card["lineage"]] == [
        ("bm", 2), ("base", 1), ("ecg", 2)]
    assert card["total_steps"] == 5


def test_bad_recipe_is_clear(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("modle: hyperprior-base\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "unknown recipe keys ['modle']" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed beside this Python")
def test_torchrun_two_processes(tmp_path, data_dir):
    recipe = _recipe(tmp_path, data_dir, steps=2, name="ddp")
    torchrun = Path(sys.executable).parent / "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "varicodec",
                        "train", "--config", str(recipe)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "runs" / "ddp" / "checkpoint.safetensors").is_file()
    assert "finished at step 2" in r.stderr
