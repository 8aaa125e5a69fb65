"""The sparse path of gated convolutions: exact, on by default, switchable."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny
from tiny_models import assert_rich, coded_symbols

from varicodec.layers import (
    GatedConv2d,
    GatedConvTranspose2d,
    calibrate_alpha,
    gated_convolutions,
    sparse_execution,
)

CL = torch.channels_last
NAMES = [f"{a}-{v}" for a in ("hyperprior", "mean", "joint") for v in ("ecg", "ecgbm")]


def _gated(cls, cin=16, cout=12, **kw):
    torch.manual_seed(0)
    if cls is GatedConv2d:
        layer = GatedConv2d(cin, cout, 5, stride=2, padding=2, **kw)
    else:
        layer = GatedConvTranspose2d(cin, cout, 5, stride=2, padding=2, output_padding=1, **kw)
    layer.gate.alpha.data.fill_(1.0)
    return layer.eval()


def _wake(model, image, y_std=3.0, z_std=3.0):
    """Scale an untrained model's last analysis layers so that the latents are
    not all rounded to zero: the decoder's gates then see real data."""
    net = model.net
    run = torch.nn.Sequential.forward  # the plain transforms, without the modulator's hooks
    with torch.no_grad():
        for seq, target, src in ((net.g_a, y_std, image), (net.h_a, z_std, None)):
            if src is None:
                y = run(net.g_a, image)
                src = y.abs() if model.arch == "hyperprior" else y
            s = float(run(seq, src).std())
            seq[-1].weight.mul_(target / s)
            seq[-1].bias.mul_(target / s)


def _masked_dense(layer, x):
    """The reference: input × (the gate the sparse run decided), full convolution."""
    xm = x * layer.gate.mask[:, :, None, None].to(x.dtype)
    if isinstance(layer, GatedConv2d):
        return F.conv2d(xm, layer.weight, layer.bias, layer.stride, layer.padding)
    return F.conv_transpose2d(xm, layer.weight, layer.bias, layer.stride, layer.padding,
                              layer.output_padding)


@pytest.mark.parametrize("cls", [GatedConv2d, GatedConvTranspose2d])
@pytest.mark.parametrize("channels_last_input", [False, True])
@pytest.mark.parametrize("layout", [True, False])  # channels-last or NCHW
def test_sparse_layer_equals_masked_dense(cls, channels_last_input, layout):
    layer = _gated(cls)
    layer.sparse_channels_last = layout
    x = torch.randn(1, 16, 12, 10) * torch.rand(1, 16, 1, 1) * 2
    if channels_last_input:
        x = x.contiguous(memory_format=CL)
    with torch.no_grad():
        out = layer(x)
        ref = _masked_dense(layer, x)
    assert 0.2 < float(layer.gate.sparsity) < 0.8  # really sparse
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the switch gives the reference computation itself
    with sparse_execution(layer, False), torch.no_grad():
        dense = layer(x)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [GatedConv2d, GatedConvTranspose2d])
@pytest.mark.parametrize("alpha", [0.0, 1e9])
def test_all_on_and_all_off(cls, alpha):
    layer = _gated(cls)
    layer.gate.alpha.data.fill_(alpha)
    x = torch.randn(1, 16, 8, 6) + 0.1
    with torch.no_grad():
        out = layer(x)
        ref = _masked_dense(layer, x)
    assert float(layer.gate.sparsity) == (1.0 if alpha else 0.0)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    if alpha:  # all off: exactly the bias
        assert torch.equal(out, layer.bias[None, :, None, None].expand_as(out))


def test_transposed_output_size_is_honoured():
    layer = _gated(GatedConvTranspose2d)
    x = torch.randn(1, 16, 5, 5)
    with torch.no_grad():
        out = layer(x, output_size=[9, 10])
        with sparse_execution(layer, False):
            ref = layer(x, output_size=[9, 10])
    assert out.shape == ref.shape == (1, 12, 9, 10)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_dense_where_the_sparse_path_does_not_apply():
    layer = _gated(GatedConv2d)
    x = torch.randn(2, 16, 8, 8) * torch.rand(1, 16, 1, 1)
    calls = []
    handle = layer.gate.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        layer(x)  # batch 2: masked dense, through the gate module
        layer.train()
        layer(x[:1])  # training: masked dense
    handle.remove()
    assert len(calls) == 2


def test_switch_restores_and_reports():
    model = tiny("hyperprior-ecg")
    convs = gated_convolutions(model)
    default = [(m.sparse_channels_last, isinstance(m, GatedConvTranspose2d)) for _, m in convs]
    assert convs and all(m.sparse for _, m in convs)
    assert all(cl == transposed for cl, transposed in default)  # NHWC for transposed only
    with sparse_execution(model, False):
        assert not any(m.sparse for _, m in convs)
    assert all(m.sparse for _, m in convs)
    switch = sparse_execution(model, True, channels_last=False)
    assert all(m.sparse and not m.sparse_channels_last for _, m in convs)
    switch.restore()
    assert [(m.sparse_channels_last, isinstance(m, GatedConvTranspose2d))
            for _, m in convs] == default


def test_calibrate_alpha_hits_targets(image):
    model = tiny("hyperprior-ecg").eval()
    _wake(model, image)
    reached = calibrate_alpha(model, lambda: model(image), 0.5)
    assert set(reached) == {n for n, _ in model.gates()}
    assert all(abs(s - 0.5) <= 1 / 16 + 1e-6 for s in reached.values()), reached
    # the calibrated model, run again on the sparse path, makes the same decisions
    model(image)
    again = model.sparsity()
    assert all(abs(again[n] - reached[n]) < 1e-6 for n in reached)


@pytest.mark.parametrize("name", NAMES)
def test_bytes_identical_sparse_on_and_off(name, image):
    image = image[:, :, :64]  # 64×64: the joint model decodes position by position
    model = tiny(name).eval()
    lm = 0.02 if model.variable_rate else None
    run = (lambda: model(image, lm)) if model.variable_rate else (lambda: model(image))
    _wake(model, image, y_std=6.0, z_std=12.0)  # a 64×64 image has only 16 z symbols
    reached = calibrate_alpha(model, run, 0.5)
    assert set(reached) == {n for n, _ in model.gates()}
    assert all(abs(s - 0.5) <= 2 / 16 + 1e-6 for s in reached.values()), reached
    model.update()
    with torch.no_grad(), coded_symbols() as seen:
        sparse = model.compress(image, lmbda=lm)
    assert_rich(seen)
    with torch.no_grad():
        s_enc = model.sparsity()
        d_sparse = model.decompress(sparse["strings"], sparse["shape"], sparse["lmbda_code"])
        with sparse_execution(model, False):
            dense = model.compress(image, lmbda=lm)
            d_dense = model.decompress(dense["strings"], dense["shape"], dense["lmbda_code"])
    enc_layers = {n: s for n, s in s_enc.items() if not n.startswith("net.g_s")}
    assert 0.3 < sum(enc_layers.values()) / len(enc_layers) < 0.7
    assert len(sparse["strings"][0][0]) > 20  # the latent is really coded
    assert sparse["strings"] == dense["strings"]
    torch.testing.assert_close(d_sparse["x_hat"], d_dense["x_hat"], rtol=1e-4, atol=1e-4)
    # ŷ = symbols (+ means from h_s, which carry float rounding in mean / joint)
    torch.testing.assert_close(d_sparse["y_hat"], d_dense["y_hat"], rtol=1e-5, atol=1e-5)
    # cross: sparse encoder, dense decoder decodes the same symbols
    with sparse_execution(model, False), torch.no_grad():
        d_cross = model.decompress(sparse["strings"], sparse["shape"], sparse["lmbda_code"])
    torch.testing.assert_close(d_cross["y_hat"], d_sparse["y_hat"], rtol=1e-5, atol=1e-5)


def test_sparse_path_counts_fewer_flops(image):
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny("hyperprior-ecg").eval()
    _wake(model, image)
    calibrate_alpha(model, lambda: model(image), 0.5)
    model.update()

    def flops():
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.compress(image)
        return counter.get_total_flops()

    sparse = flops()
    with sparse_execution(model, False):
        dense = flops()
    assert sparse < 0.8 * dense


@pytest.mark.parametrize("layout", ["nchw", "nhwc", "strided"])
def test_inference_energy_matches_training_formula(layout):
    from varicodec.layers import EnergyChannelGate

    x = torch.randn(2, 24, 40, 36) * torch.rand(1, 24, 1, 1)
    ref = x.pow(2).mean(dim=(2, 3))
    xx = {"nchw": x, "nhwc": x.contiguous(memory_format=CL), "strided": x.transpose(2, 3)}[layout]
    old = EnergyChannelGate.ENERGY_BLOCK_BYTES
    EnergyChannelGate.ENERGY_BLOCK_BYTES = 24 * 4 * 100  # several blocks of 100 pixels
    try:
        got = EnergyChannelGate.energy(xx)
    finally:
        EnergyChannelGate.ENERGY_BLOCK_BYTES = old
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
