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


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(2, 16, 9, 7), (2, 64, 40, 31)],
                         ids=["one-tile", "tiles"])  # 2 480 positions: 3 tiles, the last short
def test_inplace_gdn_is_compressais_gdn_bit_for_bit(inverse, layout, shape):
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
