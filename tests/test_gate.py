"""Energy-based channel gating."""

import pytest
import torch
from conftest import tiny
from tiny_models import compress_rich, texture, tiny_model

from varicodec.layers import EnergyChannelGate, eca_kernel_size, insert_gates


def test_eca_kernel_size():
    assert eca_kernel_size(128) == 5 and eca_kernel_size(192) == 5
    assert all(eca_kernel_size(c) % 2 == 1 for c in (4, 16, 64, 320))


def test_hard_gate_zeroes_channels_and_reports_sparsity():
    torch.manual_seed(0)
    gate = EnergyChannelGate(32, alpha_init=1.0).eval()
    x = torch.randn(2, 32, 8, 8) * torch.rand(1, 32, 1, 1) * 3
    y = gate(x)
    zero = (y.abs().amax(dim=(2, 3)) == 0)
    assert torch.equal(zero, ~gate.mask)
    assert float(gate.sparsity) == pytest.approx(zero.float().mean().item())
    kept = gate.mask[:, :, None, None].expand_as(x)
    assert torch.equal(y[kept], x[kept])
    assert 0 < float(gate.sparsity) < 1


def test_raising_alpha_raises_sparsity():
    torch.manual_seed(1)
    x = torch.randn(1, 64, 8, 8) * torch.rand(1, 64, 1, 1)
    gate = EnergyChannelGate(64).eval()
    levels = []
    for a in (0.0, 0.3, 0.7, 1.0, 2.0):
        gate.alpha.data.fill_(a)
        gate(x)
        levels.append(float(gate.sparsity))
    assert levels == sorted(levels) and levels[0] == 0.0 and levels[-1] > 0.5


def test_alpha_zero_is_identity():
    gate = EnergyChannelGate(16).eval()
    x = torch.randn(1, 16, 4, 4)
    assert torch.equal(gate(x), x)


def test_straight_through_gradient_reaches_alpha():
    gate = EnergyChannelGate(16, alpha_init=0.8).train()
    x = torch.randn(2, 16, 4, 4) * torch.rand(1, 16, 1, 1)
    (gate(x).sum() + gate.sparsity).backward()
    assert gate.alpha.grad is not None and gate.alpha.grad.abs().sum() > 0


def test_insert_gates_skips_rgb_and_named():
    from compressai.models import JointAutoregressiveHierarchicalPriors

    net = JointAutoregressiveHierarchicalPriors(16, 16)
    names = insert_gates(net, skip=("context_prediction", "entropy_parameters"))
    assert "g_a.0" not in names  # RGB input
    assert "g_a.2" in names and "g_s.6" in names and "h_s.0" in names
    assert not any(n.startswith(("entropy_parameters", "context_prediction")) for n in names)


def test_dense_checkpoint_loads_into_gated_model():
    base = tiny("hyperprior-base")
    gated = tiny("hyperprior-ecg")
    res = gated.load_state_dict(base.state_dict(), strict=False)
    assert not res.unexpected_keys
    gate_keys = {k for k in gated.state_dict() if ".gate." in k}
    assert gate_keys and set(res.missing_keys) == gate_keys


def test_unstable_hyper_gates_are_sent():
    """When a hyper-synthesis gate decision is too close to call, the encoder sends
    the masks and the decoder uses them instead of recomputing."""
    from varicodec.errors import DesyncError

    image = texture()
    model = tiny_model("hyperprior-ecg", alpha=0.8)
    hs = model._hs_gates()
    for g in hs:  # every decision counts as clear: nothing is sent
        g.STABILITY_TOL = -1.0
    try:
        c_stable = compress_rich(model, image)
        for g in hs:  # pretend float noise made a decision ambiguous
            g.STABILITY_TOL = 10.0
        c = compress_rich(model, image)
    finally:
        for g in hs:
            del g.STABILITY_TOL
    assert c_stable["strings"][2] == [b""]
    side = c["strings"][2][0]
    assert len(side) == (sum(g.channels for g in hs) + 7) // 8
    assert c["strings"][:2] == c_stable["strings"][:2]
    d = model.decompress(c["strings"], c["shape"])
    d0 = model.decompress(c_stable["strings"], c_stable["shape"])
    torch.testing.assert_close(d["x_hat"], d0["x_hat"])
    # the decoder really uses the sent masks: one flipped bit gives other scales, so
    # other symbols (without the guard stream) or a failed symbol check (with it)
    flipped = [c["strings"][0], c["strings"][1], [bytes([side[0] ^ 0x80]) + side[1:]]]
    other = model.decompress(flipped, c["shape"])  # version-1 layout: no guard
    assert (other["y_hat"] - d["y_hat"]).abs().max() > 1
    with pytest.raises(DesyncError):
        model.decompress([*flipped, c["strings"][3]], c["shape"])
    with pytest.raises(ValueError, match="wrong length"):
        model.decompress([c["strings"][0], c["strings"][1], [side[:-1]]], c["shape"])
