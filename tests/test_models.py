"""Every registry model: shapes, gradients, real coding equal to the forward pass."""

import pytest
import torch
from conftest import tiny
from tiny_models import compress_rich, texture, tiny_model

from varicodec import list_models
from varicodec.layers import BitrateModulator, EnergyChannelGate

ALL = list_models()


def _autoregressive(name: str) -> bool:
    """Coded position by position around the predicted mean (joint, cheng2020)."""
    from compressai.models import JointAutoregressiveHierarchicalPriors

    from varicodec import create_model

    return isinstance(create_model(name, N=16, M=16).net, JointAutoregressiveHierarchicalPriors)


AR = [n for n in ALL if _autoregressive(n)]


def _lm(model, value=0.01):
    return value if model.variable_rate else None


def test_every_architecture_has_four_variants():
    assert len(ALL) == 4 * len({n.rpartition("-")[0] for n in ALL}) >= 16
    assert {n.rpartition("-")[2] for n in ALL} == {"base", "ecg", "bm", "ecgbm"}


def test_unknown_name_is_clear():
    from varicodec import create_model

    with pytest.raises(ValueError, match="unknown model"):
        create_model("hyperprior-fancy")


@pytest.mark.parametrize("name", ALL)
def test_forward_and_backward(name, image):
    model = tiny(name).train()
    x = image.repeat(2, 1, 1, 1)
    lm = torch.tensor([0.002, 0.1]) if model.variable_rate else None
    out = model(x, lmbda=lm)
    assert out["x_hat"].shape == x.shape
    assert set(out["likelihoods"]) == {"y", "z"}
    assert out["likelihoods"]["y"].shape[:2] == (2, 16)
    from varicodec import RateDistortionLoss

    loss = RateDistortionLoss(gamma=0.5, regularizer="sparsity")(out, x, model)["loss"]
    loss.backward()
    for m in model.modules():
        if isinstance(m, EnergyChannelGate):
            assert m.alpha.grad is not None and m.kernel_logits.grad is not None
        if isinstance(m, BitrateModulator):
            assert m.fc2.weight.grad is not None and m.fc2.weight.grad.abs().sum() > 0
    assert model.gated == bool(model.gates())


@pytest.mark.parametrize("name", [n for n in ALL if n not in AR])
def test_coding_matches_forward(name):
    image = texture()
    model = tiny_model(name, alpha=0.8)
    with torch.no_grad():
        ref = model(image, lmbda=_lm(model))
        ref_y = model._y_hat.clone()
    c = compress_rich(model, image, lmbda=_lm(model))
    assert c["strings"] and all(isinstance(s[0], bytes) for s in c["strings"])
    d = model.decompress(c["strings"], c["shape"], c["lmbda_code"])
    torch.testing.assert_close(d["y_hat"], ref_y, atol=1e-5, rtol=0)
    torch.testing.assert_close(d["x_hat"], ref["x_hat"].clamp(0, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", AR)
def test_joint_coding_matches_encoder(name):
    """The joint model quantises around the predicted mean while coding (CompressAI's
    training pass rounds around 0), so the reference is the encoder's own ŷ."""
    image = texture()
    model = tiny_model(name, alpha=0.8)
    seen = {}
    original = model.net._compress_ar

    def spy(y_hat, *args):
        out = original(y_hat, *args)
        seen["y_hat"] = y_hat[:, :, 2:-2, 2:-2].clone()
        return out

    model.net._compress_ar = spy
    # CompressAI's sequential loop, which the spy watches (tests/test_wavefront.py checks
    # the default wavefront coder against it)
    c = compress_rich(model, image, lmbda=_lm(model), order="sequential")
    d = model.decompress(c["strings"], c["shape"], c["lmbda_code"], order="sequential")
    torch.testing.assert_close(d["y_hat"], seen["y_hat"], atol=1e-5, rtol=0)
    # the image itself is coded: the analysis of another image gives another ŷ
    with torch.no_grad():
        model(texture(seed=1), lmbda=_lm(model))
    assert (model._y_hat - seen["y_hat"]).abs().max() > 1
    assert d["x_hat"].shape == image.shape


def test_fixed_rate_refuses_other_lambda(image):
    model = tiny("hyperprior-base", lmbda=0.0067).eval()
    model.update()
    with pytest.raises(ValueError, match="fixed-rate"):
        model.compress(image, lmbda=0.05)


def test_image_size_must_be_multiple(image):
    model = tiny("mean-base").eval()
    with pytest.raises(ValueError, match="multiples of 64"):
        model(image[:, :, :100])


def test_save_load_roundtrip(tmp_path):
    from varicodec import load_model, save_model

    image = texture()
    model = tiny_model("hyperprior-ecgbm", alpha=0.5)
    path = save_model(model, tmp_path / "m.safetensors", card={"note": "test"})
    loaded = load_model(path)
    assert loaded.card == {"note": "test"}
    c1 = compress_rich(model, image, lmbda=0.02)
    c2 = compress_rich(loaded, image, lmbda=0.02)
    assert c1["strings"] == c2["strings"]
    d = loaded.decompress(c1["strings"], c1["shape"], c1["lmbda_code"])
    d0 = model.decompress(c1["strings"], c1["shape"], c1["lmbda_code"])
    assert torch.equal(d["x_hat"], d0["x_hat"])


def test_weights_files_leave_out_the_context_mask(tmp_path):
    from safetensors import safe_open

    from varicodec import load_model, save_model
    from varicodec.models import weights_fingerprint
    from varicodec.models.io import derived_buffers

    model = tiny_model("joint-bm")
    derived = derived_buffers(model)
    assert derived == {"net.context_prediction.mask"}
    path = save_model(model, tmp_path / "j.safetensors")
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
    assert not keys & derived and "net.context_prediction.weight" in keys
    loaded = load_model(path)
    assert torch.equal(loaded.state_dict()["net.context_prediction.mask"],
                       model.state_dict()["net.context_prediction.mask"])
    assert weights_fingerprint(loaded) == weights_fingerprint(model)
    # and a training run can start from the file (the strict key check of --init)
    from varicodec.train.init import load_checked

    fresh = tiny_model("joint-bm")
    with safe_open(str(path), framework="pt") as f:
        assert load_checked(fresh, {k: f.get_tensor(k) for k in f.keys()}, "init") == []
    assert weights_fingerprint(fresh) == weights_fingerprint(model)


@pytest.mark.parametrize("name", ["hyperprior-bm", "joint-base", "hyperprior-ecgbm",
                                  "joint-ecg"])
def test_encoder_runs_the_analysis_channels_last(name):
    """On the CPU the encoder's g_a runs channels-last (faster in oneDNN), dense or gated
    (the sparse convolutions too), in every encoder path alike: cached_analysis codes the
    same streams as compress, both coding orders of the joint model see the same y, the
    convolutions get their own forward and layout back, and the NCHW layout
    (``analysis_channels_last = False``) codes a y within float32 ulp."""
    from torch import nn

    from varicodec.layers import GatedConv2d

    model = tiny_model(name)
    x = texture()
    kw = {"lmbda": 0.01} if model.variable_rate else {}
    seen = []   # the layout of the input of g_a's second convolution, and of y
    hook = model.net.g_a[2].register_forward_hook(
        lambda m, i, y: seen.append(i[0].is_contiguous(memory_format=torch.channels_last)
                                    and y.is_contiguous(memory_format=torch.channels_last)))
    model.net.g_a.register_forward_hook(lambda m, i, y: seen.append(y.is_contiguous()))
    coded = model.compress(x, **kw)
    with model.cached_analysis(x):
        assert model.compress(x, **kw)["strings"] == coded["strings"]
    hook.remove()
    # channels-last inside, y in the standard layout (cached_analysis's g_a runs
    # without the transform's own hooks)
    assert seen == [True, True, True]
    assert not any("forward" in vars(m) for m in model.net.g_a.modules()
                   if type(m) is nn.Conv2d)
    gated = [m for m in model.net.g_a.modules() if isinstance(m, GatedConv2d)]
    assert bool(gated) == model.gated
    assert not any(m.sparse_channels_last for m in gated)  # the layer's own default again
    assert not model.net.g_a[-1]._forward_hooks
    if _autoregressive(name):
        seq = model.compress(x, order="sequential")
        a = model.decompress(coded["strings"], coded["shape"])["y_hat"]
        b = model.decompress(seq["strings"], seq["shape"], order="sequential")["y_hat"]
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
    model.analysis_channels_last = False
    nchw = model.compress(x, **kw)
    with torch.no_grad():
        y = nn.Sequential.forward(model.net.g_a, x)
        model.analysis_channels_last = True
        with model._analysis_layout(x) as xc:
            yc = nn.Sequential.forward(model.net.g_a, xc)
    assert yc.is_contiguous()
    torch.testing.assert_close(yc, y, rtol=1e-5, atol=1e-5 * float(y.abs().max()))
    out = model.decompress(nchw["strings"], nchw["shape"], nchw.get("lmbda_code"))
    assert out["x_hat"].shape == x.shape


@pytest.mark.parametrize("name", ["hyperprior-bm", "mean-base"])
def test_decoder_hands_a_dense_synthesis_channels_last_input(name):
    """On the CPU a dense g_s gets its input channels-last while decompress runs (faster
    in oneDNN), returns the image in the standard layout, gives the NCHW decoder's
    picture, and the hooks go when decompress ends."""
    model = tiny_model(name)
    x = texture()
    kw = {"lmbda": 0.01} if model.variable_rate else {}
    coded = model.compress(x, **kw)
    seen = []
    probe = model.net.g_s[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    hooks = (len(model.net.g_s._forward_pre_hooks), len(model.net.g_s._forward_hooks))
    fast = model.decompress(coded["strings"], coded["shape"], coded.get("lmbda_code"))
    model.synthesis_channels_last = False
    plain = model.decompress(coded["strings"], coded["shape"], coded.get("lmbda_code"))
    probe.remove()
    assert seen == [True, False]
    assert (len(model.net.g_s._forward_pre_hooks), len(model.net.g_s._forward_hooks)) == hooks
    assert fast["x_hat"].is_contiguous() and fast["y_hat"].is_contiguous()
    torch.testing.assert_close(fast["x_hat"], plain["x_hat"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["hyperprior-base", "mean-ecg", "joint-base"])
def test_compressai_network_is_the_same_dense_model(name):
    """CompressAI's network as shipped, holding our weights: the same bitstream as ours for
    a dense model; a gated model's transforms without the gates; bm needs folding first."""
    from conftest import tiny

    model = tiny(name).eval()
    net = model.compressai_network()
    assert not net.training and not any(".gate" in k for k in net.state_dict())
    assert not any(type(m).__name__ == "InplaceGDN" for m in net.modules())
    for _, g in model.gates():
        g.alpha.data.fill_(-1e3)  # every channel passes: the gated model computes the dense one
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        theirs = net.compress(x)["strings"]
        model.update(force=True)
        ours = model.compress(x)["strings"]
    assert ours[0] == theirs[0]
    with pytest.raises(ValueError, match="fold it at one λ first"):
        tiny("hyperprior-bm").compressai_network()
