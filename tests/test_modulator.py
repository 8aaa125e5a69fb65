"""Bit-rate modulator and λ handling."""

import math

import pytest
import torch
from conftest import tiny
from tiny_models import compress_rich, texture, tiny_model

from varicodec.layers import BitrateModulator, LmbdaRange
from varicodec.quality import QUALITY_LMBDAS, lmbda_to_quality, quality_to_lmbda


def test_initial_gain_follows_sqrt_lambda():
    r = LmbdaRange(0.0018, 0.18)
    m = BitrateModulator(8, r, lmbda_ref=0.018)
    g = m(torch.tensor([0.0018, 0.018, 0.18]))
    assert g.shape == (3, 8) and (g > 0).all()
    torch.testing.assert_close(g[:, 0], torch.tensor([math.sqrt(0.1), 1.0, math.sqrt(10)]))
    inv = BitrateModulator(8, r, lmbda_ref=0.018, exponent=-0.5)
    torch.testing.assert_close(g * inv(torch.tensor([0.0018, 0.018, 0.18])), torch.ones(3, 8))


def test_lambda_code_roundtrip_and_range():
    r = LmbdaRange(0.0018, 0.18)
    for lm in (0.0018, 0.0123, 0.18):
        assert r.decode(r.encode(lm)) == pytest.approx(lm, rel=1e-4)
        assert r.coded(lm) == r.decode(r.encode(lm))
    with pytest.raises(ValueError, match="outside this model's trained range"):
        r.encode(0.5)
    with pytest.raises(ValueError, match="outside"):
        r.check(float("nan"))


def test_decoder_applies_encoders_lambda():
    image = texture()
    model = tiny_model("mean-bm")
    c = compress_rich(model, image, lmbda=0.0421)
    assert c["lmbda"] == pytest.approx(0.0421, rel=1e-4)
    assert model.lmbda_range.decode(c["lmbda_code"]) == c["lmbda"]
    with torch.no_grad():
        ref = model(image, lmbda=c["lmbda"])["x_hat"].clamp(0, 1)
    d = model.decompress(c["strings"], c["shape"], c["lmbda_code"])
    torch.testing.assert_close(d["x_hat"], ref, atol=1e-5, rtol=0)
    # decoding with another λ code gives another image: λ really travels with the data
    other = model.decompress(c["strings"], c["shape"], c["lmbda_code"] // 2)
    assert (other["x_hat"] - d["x_hat"]).abs().max() > 1e-3


def test_two_lambdas_two_bitstreams():
    image = texture()
    model = tiny_model("hyperprior-ecgbm")
    a = model.compress(image, lmbda=0.002)
    b = compress_rich(model, image, lmbda=0.15)
    assert a["strings"][0] != b["strings"][0]
    assert len(b["strings"][0][0]) > len(a["strings"][0][0])


def test_out_of_range_lambda_is_clear(image):
    model = tiny("joint-bm").eval()
    model.update()
    with pytest.raises(ValueError, match=r"outside this model's trained range \[0.0018, 0.18\]"):
        model.compress(image, lmbda=1.0)
    with pytest.raises(ValueError, match="give lmbda"):
        model.compress(image)


def test_quality_mapping():
    for q, lm in enumerate(QUALITY_LMBDAS, start=1):
        assert quality_to_lmbda(q) == pytest.approx(lm)
        assert lmbda_to_quality(lm) == pytest.approx(q)
    mid = quality_to_lmbda(4.5)
    assert QUALITY_LMBDAS[3] < mid < QUALITY_LMBDAS[4]
    with pytest.raises(ValueError):
        quality_to_lmbda(9)
