"""InplaceGDN: CompressAI's GDN / IGDN, bit for bit, with an in-place inference path."""

import pytest
import torch
from compressai.layers import GDN, GDN1

from varicodec.layers import InplaceGDN, use_inplace_gdn
from varicodec.models import create_model
from varicodec.models.registry import ARCHITECTURES


def _trained_like(layer: GDN) -> GDN:
    """Non-trivial parameters: a dense positive γ and β around 1."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        c = layer.beta.numel()
        layer.beta.copy_(layer.beta_reparam.init(1 + torch.rand(c, generator=g)))
        layer.gamma.copy_(layer.gamma_reparam.init(0.1 * torch.rand(c, c, generator=g)))
    return layer


@pytest.fixture
def threads():
    """Sets torch's thread count for the test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 16, 9, 7), (1, 192, 20, 24)], ids=["small", "N192"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_inplace_gdn_is_compressais_gdn_bit_for_bit(inverse, layout, shape, n_threads, threads):
    """On one thread as on two (channels-last: through oneDNN at both, where
    CompressAI's F.conv2d takes its plain matrix product on one thread)."""
    threads(n_threads)
    ref = _trained_like(GDN(shape[1], inverse=inverse))
    fast = InplaceGDN(shape[1], inverse=inverse)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(*shape).contiguous(memory_format=layout)
    before = x.clone()
    with torch.no_grad():
        want, got = ref(x), fast(x)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=layout)  # the layout it came in
    assert torch.equal(x, before)  # the input is untouched
    # with autograd: CompressAI's own path, gradients included
    x.requires_grad_(True)
    fast(x).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_models_use_it_with_unchanged_state_dict_keys():
    model = create_model("hyperprior-base", N=8, M=12)
    layers = [m for m in model.net.modules() if isinstance(m, GDN)]
    assert layers and all(type(m) is InplaceGDN for m in layers)
    plain = ARCHITECTURES["hyperprior"].build(8, 12)  # CompressAI's net as it comes
    assert not any(type(m) is InplaceGDN for m in plain.modules())
    assert set(model.net.state_dict()) == set(plain.state_dict())
    # a subclass with its own forward is left alone
    net = torch.nn.Sequential(GDN1(4), GDN(4))
    assert use_inplace_gdn(net) == 1 and type(net[0]) is GDN1


def test_the_onednn_path_gives_the_same_output_on_one_and_two_threads(threads):
    """At 320 channels CompressAI's layer itself differs in the low bits between one
    thread (plain matrix product) and two (oneDNN); ours does not."""
    layer = _trained_like(InplaceGDN(320, inverse=True))
    x = torch.rand(1, 320, 16, 24).contiguous(memory_format=torch.channels_last)
    out = []
    with torch.no_grad():
        for n in (1, 2):
            threads(n)
            out.append(layer(x))
    assert torch.equal(out[0], out[1])


def test_flops_are_counted_on_the_onednn_path(monkeypatch):
    """FlopCounterMode has no formula for aten.mkldnn_convolution; count_flops adds it, so
    a channels-last GDN counts the same FLOPs as through F.conv2d."""
    from varicodec.eval.flops import count_flops
    from varicodec.layers import gdn

    layer = _trained_like(InplaceGDN(32, inverse=True))
    x = torch.rand(1, 32, 12, 10).contiguous(memory_format=torch.channels_last)
    counts = {}
    for onednn in (True, False):
        monkeypatch.setattr(gdn, "ONEDNN", onednn)
        with torch.no_grad():
            counts[onednn] = count_flops(layer, x)[1]
    assert counts[True] == counts[False] == 2 * 32 * 32 * 12 * 10
