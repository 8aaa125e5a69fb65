"""Widening a trained model (varicodec.models.widen, ``varicodec widen``): the wide model
reconstructs exactly as the narrow one, codes (nearly) the same bytes, and its new
channels learn."""

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tiny_models import compress_rich, texture, tiny_model

from varicodec.cli import main
from varicodec.codec.api import decode, encode_image
from varicodec.losses import RateDistortionLoss
from varicodec.models import load_model, save_model
from varicodec.models.widen import widen_model

N, M = 24, 28   # the tiny models are N = M = 16


@pytest.fixture(scope="module", params=["hyperprior-bm", "hyperprior-base"])
def pair(request):
    kw = {} if request.param.endswith("bm") else {"lmbda": 0.0130}
    narrow = tiny_model(request.param, **kw)
    return narrow, widen_model(narrow, N, M)


def _lm(model):
    return 0.013 if model.variable_rate else None


def test_wide_model_has_the_new_sizes(pair):
    narrow, wide = pair
    assert (wide.config["N"], wide.config["M"]) == (N, M)
    assert wide.net.g_a[-1].out_channels == M and wide.net.g_a[0].out_channels == N
    assert wide.name == narrow.name


def test_forward_reconstruction_and_old_likelihoods_unchanged(pair):
    narrow, wide = pair
    x = texture()
    lm = None if _lm(narrow) is None else torch.tensor([_lm(narrow)])
    with torch.no_grad():
        a = narrow(x, lm) if lm is not None else narrow(x)
        b = wide(x, lm) if lm is not None else wide(x)
    assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-6)
    for key in ("y", "z"):
        old = a["likelihoods"][key]
        c = old.shape[1]
        # the same up to float summation order in the wider convolutions
        assert torch.allclose(old, b["likelihoods"][key][:, :c], rtol=1e-4, atol=1e-7)
        new_bits = float(-torch.log2(b["likelihoods"][key][:, c:]).sum())
        old_bits = float(-torch.log2(old).sum())
        assert new_bits < 0.01 * old_bits, (key, new_bits, old_bits)  # new channels ~free


def test_real_bitstream_decodes_to_the_same_picture(pair):
    narrow, wide = pair
    x = texture()
    compress_rich(wide, x, _lm(wide))   # the wide model still codes real information
    img = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    kw = {} if _lm(narrow) is None else {"lmbda": _lm(narrow)}
    a = encode_image(img, narrow, compute_psnr=False, **kw)
    b = encode_image(img, wide, compute_psnr=False, **kw)
    assert np.array_equal(np.asarray(decode(a.data, narrow)), np.asarray(decode(b.data, wide)))
    assert len(b.data) <= len(a.data) * 1.02 + 16, (len(a.data), len(b.data))


def test_new_channels_receive_gradient(pair):
    narrow, wide = pair
    wide = widen_model(narrow, N, M)   # a private copy to train
    wide.train()
    x = texture()
    crit = RateDistortionLoss()
    lm = torch.full((1,), 0.013)
    out = wide(x, lm) if wide.variable_rate else wide(x)
    loss = crit(out, x, wide)["loss"]
    loss.backward()
    net = wide.net
    # the weights out of the new channels start at zero and must not be stuck there
    assert net.g_s[0].weight.grad[16:].abs().sum() > 0      # new y → synthesis
    assert net.g_s[-1].weight.grad[16:].abs().sum() > 0     # new hidden → RGB
    assert net.h_s[-2].weight.grad[16:].abs().sum() > 0     # h_s rows of the new scales
    assert net.g_a[-1].weight.grad[16:].abs().sum() > 0     # the new latents themselves


def test_refusals():
    gated = tiny_model("hyperprior-ecgbm")
    with pytest.raises(ValueError, match="gated"):
        widen_model(gated, N, M)
    joint = tiny_model("joint-bm")
    with pytest.raises(ValueError, match="hyperprior"):
        widen_model(joint, N, M)
    with pytest.raises(ValueError, match="narrow"):
        widen_model(tiny_model("hyperprior-bm"), 8, M)


def test_cli_writes_the_wide_model_with_its_lineage(tmp_path, capsys):
    narrow = tiny_model("hyperprior-bm")
    src = tmp_path / "narrow.safetensors"
    save_model(narrow, src, {"name": "hyperprior-bm", "steps": 7,
                             "lineage": [{"run": "a", "model": "hyperprior-bm", "steps": 7}]})
    out = tmp_path / "wide.safetensors"
    assert main(["widen", str(src), "--N", str(N), "--M", str(M), "--out", str(out)]) == 0
    wide = load_model(out)
    assert (wide.config["N"], wide.config["M"]) == (N, M)
    card = json.loads(out.with_name(out.name + ".json").read_text())
    assert card["lineage"][-1]["run"] == "widen" and card["lineage"][0]["steps"] == 7
    with safe_open(str(out), framework="pt") as f:
        assert f.get_tensor("net.g_a.6.weight").dtype == torch.float16
    # bad input: one line, non-zero, the input untouched
    before = src.read_bytes()
    bad = tmp_path / "x.safetensors"
    assert main(["widen", str(src), "--N", "8", "--M", str(M), "--out", str(bad)]) != 0
    assert main(["widen", str(src), "--N", str(N), "--M", str(M), "--out", str(src)]) != 0
    assert src.read_bytes() == before and not bad.exists()
    assert "error" in capsys.readouterr().err
