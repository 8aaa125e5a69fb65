import pytest
import torch
from conftest import set_sparsity, tiny

from varicodec import RateDistortionLoss


def test_loss_terms(image):
    model = tiny("hyperprior-ecgbm").train()
    set_sparsity(model, 0.5)
    out = model(image.repeat(2, 1, 1, 1), lmbda=torch.tensor([0.002, 0.1]))
    r = RateDistortionLoss(gamma=0.0)(out, image.repeat(2, 1, 1, 1), model)
    assert set(r) == {"loss", "bpp", "mse", "psnr_db", "sparsity", "reg"}
    assert r["bpp"] > 0 and 0 <= r["sparsity"] <= 1
    ra = RateDistortionLoss(gamma=2.0, regularizer="alpha", alpha_target=1.0)(
        out, image.repeat(2, 1, 1, 1), model)
    n = len(model.gates())
    assert ra["reg"].item() == pytest.approx(n * 0.25)
    assert (ra["loss"] - r["loss"]).item() == pytest.approx(2.0 * n * 0.25, rel=1e-4)
    rs = RateDistortionLoss(gamma=1.0, regularizer="sparsity", sparsity_target=0.5)(
        out, image.repeat(2, 1, 1, 1), model)
    expected = sum((float(g.sparsity) - 0.5) ** 2 for _, g in model.gates())
    assert rs["reg"].item() == pytest.approx(expected, rel=1e-5)


def test_per_example_lambda_weights_distortion(image):
    model = tiny("hyperprior-bm").train()
    x = image.repeat(2, 1, 1, 1)
    torch.manual_seed(0)
    out = model(x, lmbda=torch.tensor([0.002, 0.002]))
    lo = RateDistortionLoss()(out, x, model)
    out["lmbda"] = torch.tensor([0.1, 0.1])
    hi = RateDistortionLoss()(out, x, model)
    expected = (0.098 * 255**2 * lo["mse"]).item()
    assert (hi["loss"] - lo["loss"]).item() == pytest.approx(expected, rel=1e-4)


def test_bad_regularizer():
    with pytest.raises(ValueError):
        RateDistortionLoss(regularizer="l1")


def test_flops_regularizer_weights_layers_by_their_multiply_adds(image):
    model = tiny("hyperprior-ecg").train()
    out = model(image)
    gates = [g for _, g in model.gates()]
    macs = [g.macs_per_channel * g.channels for g in gates]
    conv = dict(model.named_modules())["net.g_s.2"]  # transposed conv, 1/8 → 1/4 resolution
    assert conv.gate.macs_per_channel == (conv.out_channels * conv.weight[0, 0].numel()
                                         * image.shape[-2] * image.shape[-1] // 16)
    # one layer fully off, the rest on: the removed share is that layer's share of the MACs
    for i, g in enumerate(gates):
        g.sparsity = torch.tensor(1.0 if i == 0 else 0.0, requires_grad=True)
    loss = RateDistortionLoss(gamma=1.0, regularizer="flops", sparsity_target=0.0)
    share = macs[0] / sum(macs)
    assert loss.sparsity_term(model).item() == pytest.approx(share**2, rel=1e-5)
    total = loss(out, image, model)["loss"]
    total.backward()
    assert gates[0].sparsity.grad.item() == pytest.approx(2 * share * macs[0] / sum(macs),
                                                          rel=1e-4)


def test_regularizers_are_a_table_over_what_gates_declare(image):
    from varicodec.losses import REGULARIZERS

    model = tiny("mean-ecg").train()
    gates = [g for _, g in model.gates()]
    assert all(g.macs_per_channel is None and g.dense_macs is None for g in gates)
    model(image)
    assert all(g.dense_macs == g.macs_per_channel * g.channels > 0 for g in gates)
    loss = RateDistortionLoss(gamma=1.0, sparsity_target=0.25)
    for name, (term, target) in REGULARIZERS.items():
        loss.regularizer = name
        expected = term(gates, getattr(loss, target))
        assert torch.equal(loss.sparsity_term(model), expected), name
