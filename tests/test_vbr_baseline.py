"""scripts/vbr_baseline.py: CompressAI's variable-rate model trained with our budget (tiny)."""

import importlib.util
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import write_images
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _script():
    path = ROOT / "scripts" / "vbr_baseline.py"
    spec = importlib.util.spec_from_file_location("vbr_baseline", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _recipe(tmp_path: Path, steps: int, name: str = "vbr-tiny") -> Path:
    train = tmp_path / "train"
    if not train.exists():
        write_images(train, 3, (96, 80), 12)
    path = tmp_path / f"{name}-{steps}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "N": 16, "M": 16, "steps": steps, "crop": 64, "batch_size": 2,
        "workers": 0, "threads": 1, "stage1_fraction": 0.5, "train_dir": str(train),
        "out_dir": str(tmp_path / "runs"), "checkpoint_minutes": 0}))
    return path


def _weights(run: Path) -> dict:
    with safe_open(str(run / "checkpoint.safetensors"), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs" / "baselines").glob("vbr-*.yaml")),
                         ids=lambda p: p.name)
def test_the_recipes_have_the_budget_of_our_cpu_bm_recipe(recipe):
    vbr = _script().load_recipe(recipe)
    ours = yaml.safe_load((ROOT / "configs" / "hyperprior-bm-cpu.yaml").read_text())
    for key in ("N", "M", "steps", "lr", "aux_lr", "lr_decay_at", "clip_grad", "crop", "scale",
                "batch_size", "seed"):
        assert getattr(vbr, key) == ours.get(key, getattr(vbr, key)), key
    assert vbr.lr_decay_at == ours["lr_decay_at"] and vbr.steps == ours["steps"]


def test_bad_recipes_are_refused(tmp_path):
    vbr = _script()
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstage1_fraction: 2\n")
    with pytest.raises(vbr.VaricodecError, match="stage1_fraction"):
        vbr.load_recipe(bad)
    bad.write_text("name: x\nlmbda: 0.1\n")
    with pytest.raises(vbr.VaricodecError, match="unknown key"):
        vbr.load_recipe(bad)


def test_train_resumes_exactly_and_codes_real_bytes(tmp_path, capsys):
    vbr = _script()
    straight = vbr.train(_recipe(tmp_path, 4, "straight"))
    vbr.train(_recipe(tmp_path, 4, "halves"), stop_at=2)
    halves = vbr.train(_recipe(tmp_path, 4, "halves"), resume=True)
    a, b = _weights(straight), _weights(halves)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "a resumed run differs from a straight one"
    assert vbr.main(["train", str(_recipe(tmp_path, 4, "straight"))]) == 2  # exists, no --resume
    assert "pass --resume" in capsys.readouterr().err

    images = write_images(tmp_path / "test", 1, (80, 72), 8)  # not a multiple of 64: padded
    results = vbr.evaluate(str(straight), str(images), str(tmp_path / "r.json"))
    points = results["points"]
    assert [p["setting"]["level"] for p in points] == list(range(8))
    assert [p["lmbda"] for p in points] == pytest.approx(
        [0.0018, 0.0035, 0.0067, 0.0130, 0.025, 0.0483, 0.0932, 0.18])
    for p in points:
        (row,) = p["images"]
        assert row["bpp"] == row["bytes"] * 8 / (80 * 72)
        assert np.isfinite(row["psnr_db"])
    net, meta = vbr.load_run(straight)
    with torch.no_grad():  # an untrained latent rounds to 0 at every level: give it range
        net.g_a[-1].weight.mul_(40)
    codec = vbr.make_codec(net, meta)
    rgb = np.asarray(Image.open(images / "im0.png").convert("RGB"))
    sizes = [len(codec.encode(rgb, level)) for level in range(8)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # a larger gain, finer steps
    data = codec.encode(rgb, 7)
    assert codec.decode(data).shape == rgb.shape
    assert codec.decode(data).tobytes() == codec.decode(data).tobytes()


def test_an_interrupt_finishes_the_step_then_checkpoints(tmp_path, monkeypatch, capsys):
    """SIGINT in the middle of a step: the step completes, the checkpoint holds it, exit 130,
    and the resumed run is the straight one."""
    vbr = _script()
    straight = vbr.train(_recipe(tmp_path, 4, "straight"))
    rd_loss, calls = vbr.rd_loss, []

    def interrupting(*args):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return rd_loss(*args)

    monkeypatch.setattr(vbr, "rd_loss", interrupting)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        vbr.train(_recipe(tmp_path, 4, "cut"))
    assert stopped.value.code == 130 and len(calls) == 2
    assert "checkpoint at step 2" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back
    monkeypatch.setattr(vbr, "rd_loss", rd_loss)
    cut = vbr.train(_recipe(tmp_path, 4, "cut"), resume=True)
    a, b = _weights(straight), _weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a), "the interrupted run differs"


def test_eval_of_a_missing_run_is_one_line(tmp_path, capsys):
    assert _script().main(["eval", str(tmp_path / "nothing"), str(tmp_path), "-o",
                           str(tmp_path / "r.json")]) == 2
    assert "no checkpoint" in capsys.readouterr().err
