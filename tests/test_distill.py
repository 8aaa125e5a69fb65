"""Layer-by-layer distillation from a dense teacher (varicodec.train.distill, `distill:`)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import write_images

from varicodec.cli import main
from varicodec.models import create_model
from varicodec.train.distill import FeatureDistiller, dense_teacher

ROOT = Path(__file__).resolve().parents[1]


def _pair(tmp_path, name="hyperprior-ecg", **kw):
    """A gated student starting from a dense model's weights, and that dense model as teacher."""
    torch.manual_seed(0)
    dense = create_model(name.replace("ecg", "base") if "bm" not in name else
                         name.replace("ecgbm", "bm"), N=16, M=16, **kw)
    path = tmp_path / "dense.safetensors"
    from varicodec.models.io import save_model

    save_model(dense, path)
    student = create_model(name, N=16, M=16, **kw)
    missing = student.load_state_dict(dense.state_dict(), strict=False).missing_keys
    assert missing and all(".gate." in k for k in missing)
    return student.train(), dense_teacher(student, str(path))


@pytest.mark.parametrize("name", ["hyperprior-ecg", "hyperprior-ecgbm", "mean-ecg"])
def test_open_gates_match_the_teacher_exactly(tmp_path, name):
    """Gates open (α = 0 … the student computes what the teacher does): the term is 0, which
    holds only because the teacher replays the student's quantisation noise."""
    student, teacher = _pair(tmp_path, name)
    assert teacher.name == name.replace("ecgbm", "bm").replace("ecg", "base")
    assert not any(p.requires_grad for p in teacher.parameters())
    for g in (m for _, m in student.gates()):
        g.alpha.data.fill_(-1e3)  # every channel passes
    x, lm = torch.rand(2, 3, 64, 64), torch.tensor([0.01, 0.05])
    with FeatureDistiller(student, teacher) as d:
        d.teacher_forward(x, lm)
        student(x, lmbda=lm)
        assert d.loss().item() == pytest.approx(0.0, abs=1e-10)
        # without the replay the noise differs and so do the features: the check can fail
        d.teacher_forward(x, lm)
        torch.rand(10)  # the student's forward now draws other noise than the teacher's
        student(x, lmbda=lm)
        assert d.loss().item() > 1e-4


def test_other_forwards_of_the_student_are_not_kept(tmp_path):
    """Only a forward after teacher_forward is recorded: validation forwards between
    training steps hold no tensors, and loss() without a teacher forward is an error."""
    student, teacher = _pair(tmp_path)
    x, lm = torch.rand(1, 3, 64, 64), torch.tensor([0.01])
    with FeatureDistiller(student, teacher) as d:
        with torch.no_grad():
            student.eval()(x, lmbda=lm)
        assert not d._student_out and not d._teacher_out
        with pytest.raises(RuntimeError, match="no matched layer ran"):
            d.loss()


def test_closed_gates_give_gradient_to_the_student_only(tmp_path):
    student, teacher = _pair(tmp_path)
    for g in (m for _, m in student.gates()):
        g.alpha.data.fill_(1.0)  # a high threshold: many channels close
    x, lm = torch.rand(2, 3, 64, 64), torch.tensor([0.01, 0.01])
    with FeatureDistiller(student, teacher) as d:
        d.teacher_forward(x, lm)
        student(x, lmbda=lm)
        term = d.loss()
    assert term.item() > 0
    term.backward()
    assert student.net.g_s[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert len(d.names) == sum(1 for n, m in student.named_modules()
                               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))
                               and n.split(".")[1] in ("g_a", "g_s", "h_a", "h_s"))


def test_mismatched_teacher_is_refused(tmp_path):
    student = create_model("hyperprior-ecg", N=16, M=16)
    other = create_model("mean-base", N=16, M=16)
    with pytest.raises(ValueError, match="does not match"):
        FeatureDistiller(student, other)


def test_training_with_a_teacher_runs_and_is_recorded(tmp_path):
    data = write_images(tmp_path / "images", 4, (96, 80), detail=12)
    cfg = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    cfg.update(train_dir=str(data), val_dir=str(data), out_dir=str(tmp_path / "runs"))
    dense = tmp_path / "bm.yaml"
    dense.write_text(yaml.safe_dump({**cfg, "name": "bm", "model": "hyperprior-bm", "steps": 2}))
    assert main(["train", "--config", str(dense)]) == 0
    gated = tmp_path / "ecgbm.yaml"
    gated.write_text(yaml.safe_dump({**cfg, "name": "ecgbm", "steps": 2, "distill": 1.0,
                                     "init": str(tmp_path / "runs" / "bm")}))
    assert main(["train", "--config", str(gated)]) == 0
    out = tmp_path / "ecgbm.safetensors"
    assert main(["export", str(tmp_path / "runs" / "ecgbm"), "--out", str(out)]) == 0
    card = json.loads(Path(f"{out}.json").read_text())
    recipe = card["recipe"] if isinstance(card["recipe"], dict) else yaml.safe_load(card["recipe"])
    assert recipe["distill"] == 1.0


def test_distill_without_teacher_is_a_clear_error(tmp_path, capsys):
    data = write_images(tmp_path / "images", 2, (96, 80), detail=12)
    cfg = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    cfg.update(train_dir=str(data), val_dir=str(data), out_dir=str(tmp_path / "runs"),
               distill=1.0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(recipe)]) == 2
    assert "distill needs a teacher" in capsys.readouterr().err
