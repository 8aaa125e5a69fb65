"""Edges that the mutation run found untested (docs/results/mutation.md): report texts,
limits, the rate-control prior, the loss's own formulas, α calibration's end cases."""

import math

import pytest
import torch
from conftest import set_sparsity, tiny

from varicodec import RateDistortionLoss
from varicodec.codec import rate_control as rc
from varicodec.layers import EnergyChannelGate, LmbdaRange


# ----------------------------------------------------------------- rate control
def _report(kind, target, achieved, note=None):
    return rc.RateControlReport(kind=kind, target=target, code=7, achieved=achieved,
                                iterations=3, seconds=0.25, converged=note is None, note=note,
                                trials=[(7, achieved)], tolerance=0.02)


def test_report_texts_and_fields():
    b = _report("bpp", 0.5, 0.51)
    assert b.summary() == ("rate control: target 0.5 bpp, got 0.5100 bpp (+2.00 %) in 3 "
                           "trials, 0.25 s")
    p = _report("psnr", 30.0, 29.95, note="stopped after 24 trials")
    assert p.summary() == ("rate control: target 30 dB, got 29.9500 dB (-0.050 dB) in 3 "
                           "trials, 0.25 s; stopped after 24 trials")
    d = p.as_dict()
    assert set(d) == {"kind", "target", "achieved", "error", "tolerance", "converged",
                      "lmbda_code", "trials", "seconds", "note"}
    assert d["note"] == "stopped after 24 trials" and d["lmbda_code"] == 7 and d["trials"] == 3


@pytest.mark.parametrize("tol", [0.0, -1.0, math.nan, math.inf])
def test_psnr_tolerance_must_be_positive_and_finite(tol):
    with pytest.raises(ValueError):
        rc.check_tolerance("psnr", tol)


def test_prior_reproduces_the_published_curve():
    """The search starts where CompressAI's curve puts the target: at each published
    point exactly, in between on the straight line (log λ against log bpp / PSNR)."""
    for lm, bpp, psnr in rc._PRIOR:
        assert rc._prior_lmbda("bpp", bpp) == pytest.approx(lm, rel=1e-9)
        assert rc._prior_lmbda("psnr", psnr) == pytest.approx(lm, rel=1e-9)
    (l1, b1, p1), (l2, b2, p2) = rc._PRIOR[2], rc._PRIOR[3]
    assert rc._prior_lmbda("psnr", (p1 + p2) / 2) == pytest.approx(math.sqrt(l1 * l2))
    assert rc._prior_lmbda("bpp", math.sqrt(b1 * b2)) == pytest.approx(math.sqrt(l1 * l2))


def test_search_uses_the_given_tolerance():
    """A loose tolerance is met by the first trial; the default one needs more."""
    rng = LmbdaRange(0.0018, 0.18)
    target = 0.5
    first = rng.decode(rng.encode(min(max(rc._prior_lmbda("bpp", target), rng.min), rng.max)))

    def bpp(code):  # 5 % above the target where the search starts
        return 1.05 * target * (rng.decode(code) / first) ** 0.7

    loose = rc.search_lmbda_code(bpp, "bpp", target, rng, tolerance=0.1)
    assert loose.converged and loose.iterations == 1 and loose.tolerance == 0.1
    tight = rc.search_lmbda_code(bpp, "bpp", target, rng)
    assert tight.converged and tight.iterations > 1 and tight.tolerance == 0.02


# ------------------------------------------------------------------------ loss
def test_loss_formulas_by_hand(image):
    model = tiny("hyperprior-ecgbm").train()
    set_sparsity(model, 0.5)
    x = image.repeat(2, 1, 1, 1)
    out = model(x, lmbda=torch.tensor([0.002, 0.1]))
    r = RateDistortionLoss()(out, x, model)
    mse = ((out["x_hat"] - x) ** 2).flatten(1).mean(1)
    assert r["mse"].item() == pytest.approx(mse.mean().item(), rel=1e-6)
    assert r["psnr_db"].item() == pytest.approx(-10 * math.log10(mse.mean().item()), rel=1e-6)
    # λ weights each example's own distortion (λ differs across this batch)
    bpp = sum(-torch.log2(v).flatten(1).sum(1) for v in out["likelihoods"].values())
    bpp = bpp / (x.shape[2] * x.shape[3])
    by_hand = (bpp + torch.tensor([0.002, 0.1]) * 255**2 * mse).mean()
    assert r["loss"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    sp = [float(g.sparsity) for _, g in model.gates()]
    assert 0 < r["sparsity"].item() == pytest.approx(sum(sp) / len(sp), rel=1e-6)
    # the α regulariser's default target is 1
    ra = RateDistortionLoss(gamma=1.0, regularizer="alpha")(out, x, model)
    assert ra["reg"].item() == pytest.approx(len(sp) * 0.25, rel=1e-6)


# ------------------------------------------------------------- α calibration
def _alpha_for():
    from varicodec.layers import sparse

    return sparse._alpha_for


def test_alpha_for_end_cases():
    torch.manual_seed(0)
    gate = EnergyChannelGate(8).eval()
    x = torch.randn(1, 8, 6, 6) * torch.linspace(0.1, 2, 8)[None, :, None, None]
    alpha_for = _alpha_for()
    assert alpha_for(gate, x, 0.0) == 0.0  # nothing off
    a_all = alpha_for(gate, x, 1.0)  # everything off, with a margin above the largest ratio
    for target, a in ((1.0, a_all), (0.5, alpha_for(gate, x, 0.5))):
        gate.alpha.data.fill_(a)
        gate(x)
        assert float(gate.sparsity) == pytest.approx(target)
    energy = EnergyChannelGate.energy(x).double()
    ratio = (energy / gate.threshold(energy.float())[1].double()).max().item()
    assert a_all == pytest.approx(2 * ratio + 1)


# ---------------------------------------------------------------------- format
def _container(**kw):
    from varicodec.codec.format import Container

    base = dict(model_name="hyperprior-ecgbm", fingerprint=bytes(range(8)), width=100,
                height=70, y=b"y" * 300, z=b"z" * 40, lmbda_code=12345)
    return Container(**{**base, **kw})


def test_container_limits_and_messages():
    from varicodec.errors import FormatError

    assert _container(lmbda_code=0xFFFF).lmbda_code == 0xFFFF
    with pytest.raises(ValueError, match="lambda code"):
        _container(lmbda_code=0x10000)
    assert len(_container(side=b"s" * 255).side) == 255
    with pytest.raises(ValueError, match="^gate side stream longer than 255 bytes$"):
        _container(side=b"s" * 256)
    with pytest.raises(ValueError, match="^a guard stream is stored exactly in format version"):
        _container(version=1, guard=bytes(4))
    data = _container().pack()
    cases = {data[:5]: "^file is truncated \\(shorter than a .vcd header\\)$",
             b"XYZ" + data[3:]: "^not a varicodec file \\(bad magic; expected 'VCD'\\)$",
             data[:-1] + bytes([data[-1] ^ 1]): "^file is corrupted or truncated \\(CRC-32 "
                                                 "mismatch\\)$"}
    for damaged, pattern in cases.items():
        with pytest.raises(FormatError, match=pattern):
            type(_container()).unpack(damaged)


# ------------------------------------------------------- model construction
def test_gate_settings_and_config_reach_the_model():
    from varicodec import create_model

    m = create_model("hyperprior-ecgbm", N=16, M=16, gate={"alpha_init": 0.3}, bm_hidden=8)
    assert m.gates() and all(torch.allclose(g.alpha.detach(), torch.full_like(g.alpha, 0.3))
                             for _, g in m.gates())
    assert m.config["bm_hidden"] == 8 and m.modulator.fc2.in_features == 8
    assert create_model("hyperprior-base", N=16, M=16).lmbda == pytest.approx(0.013)


def test_gated_copy_keeps_the_convolution():
    from torch import nn

    from varicodec.layers import insert_gates

    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2))
    with torch.no_grad():
        x = torch.randn(1, 8, 9, 9)
        ref = net(x)
    assert insert_gates(net) == ["0"]
    conv = net[0]
    assert (conv.dilation, conv.groups, conv.padding) == ((2, 2), 2, (2, 2))
    torch.testing.assert_close(net.eval()(x), ref)  # α = 0: nothing gated off


def test_lmbda_range_bounds():
    with pytest.raises(ValueError):
        LmbdaRange(0.0, 0.18)
    r = LmbdaRange(0.0018, 0.18)
    r.check(0.0018)
    r.check(0.18)
    for bad in (0.0018 * 0.99, 0.18 * 1.01, 0.5):
        with pytest.raises(ValueError, match="outside"):
            r.check(bad)


def test_calibrate_alpha_per_layer_targets():
    from tiny_models import texture, tiny_model

    from varicodec.layers import calibrate_alpha

    model = tiny_model("hyperprior-ecg")
    x = texture()
    names = [n for n, _ in model.gates()]
    targets = {n.removeprefix("net."): 0.25 if i % 2 else 0.5 for i, n in enumerate(names)}
    reached = calibrate_alpha(model, lambda: model(x), targets)
    assert set(reached) == set(names)
    for n in names:
        assert abs(reached[n] - targets[n.removeprefix("net.")]) <= 1 / 16 + 1e-6, reached
    with pytest.raises(KeyError, match="no target sparsity"):
        calibrate_alpha(model, lambda: model(x), {})
