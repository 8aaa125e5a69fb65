"""Folding a bit-rate modulator into a fixed-rate model (varicodec.models.fold)."""

import pytest
import torch
from conftest import tiny

from varicodec.models import save_model
from varicodec.models.fold import fold_bitrate_modulator
from varicodec.train.loop import load_init_weights


def _bm(name: str = "hyperprior-bm"):
    model = tiny(name)
    with torch.no_grad():  # make the gains non-trivial and different per channel
        for mod in (model.modulator, model.demodulator):
            mod.fc2.weight.add_(0.3 * torch.randn_like(mod.fc2.weight))
    return model.eval()


@pytest.mark.parametrize("arch", ["hyperprior", "mean"])
def test_folded_model_codes_like_the_variable_rate_one(arch, image):
    bm = _bm(f"{arch}-bm")
    bm.update()
    fixed = fold_bitrate_modulator(bm, 0.02)
    assert fixed.name == f"{arch}-base" and fixed.lmbda == pytest.approx(0.02)
    fixed.update()
    with torch.no_grad():
        a, b = bm(image, lmbda=0.02), fixed(image)
        assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-5)
        sa = bm.compress(image, lmbda=0.02)["strings"]
        sb = fixed.compress(image)["strings"]
    assert sa == sb
    # and at another λ the gains differ, so the fold is not the identity
    with torch.no_grad():
        assert not torch.allclose(bm(image, lmbda=0.1)["x_hat"], b["x_hat"], atol=1e-3)


def test_fold_refuses_fixed_rate_gated_and_out_of_range():
    with pytest.raises(ValueError, match="already fixed-rate"):
        fold_bitrate_modulator(tiny("hyperprior-base"), 0.01)
    with pytest.raises(ValueError, match="gated"):
        fold_bitrate_modulator(tiny("hyperprior-ecgbm"), 0.01)
    with pytest.raises(ValueError):
        fold_bitrate_modulator(_bm(), 5.0)


def test_init_from_variable_rate_weights_folds(tmp_path, image):
    bm = _bm()
    path = tmp_path / "bm.safetensors"
    save_model(bm, path, half=False)
    base = tiny("hyperprior-base", lmbda=0.005)
    assert load_init_weights(base, path) == []
    base.eval()
    with torch.no_grad():
        want = fold_bitrate_modulator(bm, 0.005)(image)["x_hat"]
        got = base(image)["x_hat"]
    assert torch.allclose(want, got, atol=1e-5)
