"""``--init compressai:ARCH:QUALITY`` and the one init loader (varicodec.train.init).

Offline: every test runs under a temporary TORCH_HOME with torch.hub's download replaced by
one that fails, and builds its own "zoo" files — random CompressAI models in the zoo's key
layout, saved under the zoo's real file names — so the real loading path (CompressAI's zoo
function with ``pretrained=True``, torch.hub's cache) runs without a network.
"""

import hashlib
import urllib.error
from pathlib import Path

import compressai
import pytest
import torch
import yaml
from conftest import tiny, write_images

from varicodec import create_model
from varicodec.models import save_model
from varicodec.quality import QUALITY_LMBDAS
from varicodec.train.init import load_init, zoo_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """A fresh TORCH_HOME; any download attempt fails (and is recorded)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    attempts = []

    def no_network(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("network disabled in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return attempts


def zoo_cache(zoo: str, quality: int, seed: int = 0, extra_key: bool = False):
    """A random CompressAI model saved in the zoo's layout (pre-1.2 entropy-bottleneck
    names, entropy tables included) at the zoo's cache path; returns (model, path)."""
    from compressai.zoo import image

    torch.manual_seed(seed)
    net = image.model_architectures[zoo](*image.cfgs[zoo][quality])
    with torch.no_grad():  # a non-trivial entropy bottleneck
        q = net.entropy_bottleneck.quantiles
        q.add_(0.1 * torch.randn_like(q))
    net.update(force=True)
    state = {}
    for k, v in net.state_dict().items():
        for new, old in (("matrices", "_matrices"), ("biases", "_biases"), ("factors", "_factors")):
            k = k.replace(f"entropy_bottleneck.{new}.", f"entropy_bottleneck.{old}.")
        state[k] = v
    if extra_key:
        state["g_a.9.weight"] = torch.zeros(3)
    _, path = zoo_file(zoo, quality)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return net.eval(), path


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(1)
    base = torch.rand(1, 3, 8, 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(64, 64), mode="bilinear",
                                           align_corners=False)


def _same_forward(model, net, x, lmbda=None, atol=1e-5):
    model.eval()
    with torch.no_grad():
        a = model(x, lmbda=lmbda)
        b = net(x)
    torch.testing.assert_close(a["x_hat"], b["x_hat"], atol=atol, rtol=0)
    for k in b["likelihoods"]:
        torch.testing.assert_close(a["likelihoods"][k], b["likelihoods"][k], atol=atol, rtol=1e-4)


def test_zoo_file_name_and_card_fields(offline):
    net, path = zoo_cache("bmshj2018-hyperprior", 1)
    assert path.name == "bmshj2018-hyperprior-1-7eb97409.pth.tar"
    assert path.parent == Path(torch.hub.get_dir()) / "checkpoints"
    model = create_model("hyperprior-base", N=128, M=192, lmbda=QUALITY_LMBDAS[0])
    r = load_init(model, "compressai:bmshj2018-hyperprior:1")
    assert offline == []                          # the cached file: no download tried
    assert r.kept_fresh == []
    assert r.pretrained["source"] == "compressai:bmshj2018-hyperprior:1"
    assert r.pretrained["compressai_version"] == compressai.__version__
    assert r.pretrained["file"] == path.name
    assert r.pretrained["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r.pretrained["sha256_matches_name"] is False   # our random file, not CompressAI's
    assert any("does not start with the hash" in n for n in r.notes)
    assert r.describe().endswith("kept fresh: nothing")
    # every tensor came across, entropy tables included
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[f"net.{k}"], v), k


@pytest.mark.parametrize("zoo, name, quality", [
    ("bmshj2018-hyperprior", "hyperprior", 1),
    ("mbt2018-mean", "mean", 2),
    ("mbt2018", "joint", 1),
])
def test_ecg_codes_like_the_pretrained_model_at_step_0(zoo, name, quality, x):
    net, _ = zoo_cache(zoo, quality)
    lm = QUALITY_LMBDAS[quality - 1]
    n, m = net.g_a[0].weight.shape[0], net.g_a[6].weight.shape[0]
    base = create_model(f"{name}-base", N=n, M=m, lmbda=lm)
    ecg = create_model(f"{name}-ecg", N=n, M=m, lmbda=lm)
    assert load_init(base, f"compressai:{zoo}:{quality}").kept_fresh == []
    r = load_init(ecg, f"compressai:{zoo}")          # quality from the recipe's λ
    assert r.pretrained["quality"] == quality
    assert r.kept_fresh and all(".gate." in k for k in r.kept_fresh)
    assert f"{len(ecg.gates())} gates" in r.describe()
    assert all(float(g.alpha.abs().max()) == 0 for _, g in ecg.gates())   # open
    _same_forward(base, net, x)
    _same_forward(ecg, net, x)
    base.update()
    ecg.update()
    cb, ce = base.compress(x), ecg.compress(x)
    assert ce["strings"][:2] == cb["strings"][:2]     # the same y and z bytes


@pytest.mark.parametrize("variant", ["bm", "ecgbm"])
def test_variable_rate_is_exact_at_the_quality_lambda(variant, x):
    net, _ = zoo_cache("mbt2018-mean", 3)
    lm = QUALITY_LMBDAS[2]
    model = create_model(f"mean-{variant}", N=128, M=192)
    r = load_init(model, "compressai:mbt2018-mean:3")
    assert r.lmbda_ref == lm and model.config["lmbda_ref"] == lm
    assert {k.split(".")[0] for k in r.kept_fresh if ".gate." not in k} == {"modulator",
                                                                          "demodulator"}
    assert "unit gain at λ=0.0067" in r.describe()
    _same_forward(model, net, x, lmbda=lm)
    with torch.no_grad():
        gain = model.modulator(torch.tensor([lm, 0.1]))
    torch.testing.assert_close(gain[0], torch.ones(192), atol=1e-6, rtol=0)
    assert float(gain[1].min()) > 1.5                 # √(0.1/0.0067) elsewhere: not the identity


def test_bm_defaults_to_quality_8_and_codes_like_it(x):
    net, _ = zoo_cache("bmshj2018-hyperprior", 8)
    bm = create_model("hyperprior-bm", N=192, M=320)
    r = load_init(bm, "compressai:bmshj2018-hyperprior")
    assert r.pretrained["source"] == "compressai:bmshj2018-hyperprior:8"
    _same_forward(bm, net, x, lmbda=0.18)
    base = create_model("hyperprior-base", N=192, M=320, lmbda=0.18)
    load_init(base, "compressai:bmshj2018-hyperprior:8")
    bm.update()
    base.update()
    assert bm.compress(x, lmbda=0.18)["strings"][:2] == base.compress(x)["strings"][:2]


def test_wrong_size_architecture_and_spec_are_clear():
    with pytest.raises(ValueError, match=r"quality 8 has N=192, M=320.*set N: 192 and M: 320"):
        load_init(create_model("hyperprior-base", N=128, M=192),
                  "compressai:bmshj2018-hyperprior:8")
    with pytest.raises(ValueError, match="quality 5 has N=192, M=320"):
        load_init(create_model("mean-base", N=128, M=192), "compressai:mbt2018-mean:5")
    with pytest.raises(ValueError, match="joint architecture; the recipe's model is mean-base"):
        load_init(create_model("mean-base", N=192, M=192), "compressai:mbt2018:1")
    with pytest.raises(ValueError, match="ARCH one of bmshj2018-hyperprior"):
        load_init(tiny("hyperprior-base"), "compressai:cheng2020-anchor:1")
    with pytest.raises(ValueError, match="integer 1–8"):
        load_init(tiny("hyperprior-base"), "compressai:bmshj2018-hyperprior:9")
    with pytest.raises(ValueError, match="name the quality"):
        load_init(create_model("hyperprior-base", N=128, M=192, lmbda=0.02),
                  "compressai:bmshj2018-hyperprior")


def test_missing_cache_without_network_is_one_line(offline):
    _, path = zoo_file("bmshj2018-hyperprior", 2)
    with pytest.raises(FileNotFoundError) as e:
        load_init(create_model("hyperprior-base", N=128, M=192),
                  "compressai:bmshj2018-hyperprior:2")
    msg = str(e.value)
    assert "\n" not in msg and "not cached" in msg and "network disabled" in msg
    assert str(path) in msg and offline[0] in msg and "TORCH_HOME" in msg
    assert not path.exists()


def test_zoo_file_in_another_layout_is_refused():
    zoo_cache("bmshj2018-hyperprior", 1, extra_key=True)
    with pytest.raises(ValueError, match="does not fit CompressAI's bmshj2018-hyperprior"):
        load_init(create_model("hyperprior-base", N=128, M=192),
                  "compressai:bmshj2018-hyperprior:1")


def test_pickled_code_is_refused():
    _, path = zoo_file("bmshj2018-hyperprior", 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"g_a.0.weight": torch.zeros(1), "x": Path("/")}, path)  # an object, not a tensor
    with pytest.raises(ValueError, match="weights_only=True"):
        load_init(create_model("hyperprior-base", N=128, M=192),
                  "compressai:bmshj2018-hyperprior:1")


def test_init_weights_that_do_not_fit_name_the_keys(tmp_path):
    joint = tmp_path / "joint.safetensors"
    save_model(tiny("joint-base"), joint, half=False)
    with pytest.raises(ValueError, match=r"joint-base do not fit mean-base.*unexpected keys "
                                         r"net\.context_prediction"):
        load_init(tiny("mean-base"), joint)
    hyper = tmp_path / "hyper.safetensors"
    save_model(tiny("hyperprior-base"), hyper, half=False)
    with pytest.raises(ValueError, match=r"shapes differ.*net\.h_s\.4\.weight"):
        load_init(tiny("mean-base"), hyper)
    mean = tmp_path / "mean.safetensors"
    save_model(tiny("mean-base"), mean, half=False)
    with pytest.raises(ValueError, match=r"missing keys net\.context_prediction"):
        load_init(tiny("joint-base"), mean)           # and the other way round
    r = load_init(tiny("hyperprior-ecg"), hyper)      # dense → gated: gates kept fresh
    assert r.kept_fresh and all(".gate." in k for k in r.kept_fresh)


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 2, (64, 64), detail=8)


def _recipe(tmp_path, images, **kw):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny-test.yaml").read_text())
    cfg.update(train_dir=str(images), val_dir=str(images), out_dir=str(tmp_path / "runs"),
               N=128, M=192, batch_size=1, steps=1, val_every=1, **kw)
    path = tmp_path / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_train_from_the_zoo_records_the_source(tmp_path, images, capsys):
    from varicodec.cli import main

    _, path = zoo_cache("bmshj2018-hyperprior", 1)
    recipe = _recipe(tmp_path, images, name="zoo-ecg", model="hyperprior-ecg",
                     lmbda=QUALITY_LMBDAS[0])
    assert main(["train", "--config", str(recipe), "--init",
                 "compressai:bmshj2018-hyperprior:1"]) == 0
    err = capsys.readouterr().err
    assert "initialised from compressai:bmshj2018-hyperprior:1; kept fresh: 13 gates" in err
    # a staged run from it carries the source on
    staged = _recipe(tmp_path, images, name="zoo-ecg-2", model="hyperprior-ecg",
                     lmbda=QUALITY_LMBDAS[0], init=str(tmp_path / "runs" / "zoo-ecg"))
    assert main(["train", "--config", str(staged)]) == 0
    assert "kept fresh: nothing" in capsys.readouterr().err
    out = tmp_path / "zoo.safetensors"
    assert main(["export", str(tmp_path / "runs" / "zoo-ecg-2"), "--out", str(out)]) == 0
    from varicodec import load_model

    card = load_model(out).card
    assert card["pretrained"]["source"] == "compressai:bmshj2018-hyperprior:1"
    assert card["pretrained"]["compressai_version"] == compressai.__version__
    assert card["pretrained"]["file"] == path.name
    assert card["pretrained"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_train_without_cache_or_network_fails_in_one_line(tmp_path, images, capsys):
    from varicodec.cli import main

    recipe = _recipe(tmp_path, images, name="zoo-missing", model="hyperprior-base",
                     lmbda=QUALITY_LMBDAS[0])
    assert main(["train", "--config", str(recipe), "--init",
                 "compressai:bmshj2018-hyperprior:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "download https://" in err[0] and "put it at" in err[0]


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "zoo").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_zoo_recipes_fit_their_pretrained_model(path):
    from varicodec.train import load_config
    from varicodec.train.init import parse_zoo_spec
    from varicodec.train.loop import build_model

    cfg = load_config(path)
    model = build_model(cfg)
    zoo, quality = parse_zoo_spec(cfg.init, model)    # architecture, N/M, λ range
    if model.variable_rate:
        assert quality == 8 and cfg.lmbda_ref == QUALITY_LMBDAS[7]
    else:
        assert cfg.lmbda == QUALITY_LMBDAS[quality - 1]
    if model.gated:
        assert cfg.gamma > 0


@pytest.mark.parametrize("target", ["mean-bm", "joint-ecgbm"])
def test_init_parts_take_another_architectures_transforms(tmp_path, target):
    """``init_parts``: a hyperprior's g_a, g_s and modulators start a mean or joint model
    (same transform layers); its own entropy model keeps the fresh initialisation."""
    src = tiny("hyperprior-bm")
    path = save_model(src, tmp_path / "hp.safetensors", half=False)
    model = tiny(target)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit"):       # the whole file cannot
        load_init(model, path)
    parts = ["g_a", "g_s", "modulator", "demodulator"]
    result = load_init(model, path, parts=parts)
    state, theirs = model.state_dict(), src.state_dict()
    for k in ("net.g_a.0.weight", "net.g_s.6.bias", "modulator.fc2.weight", "net.g_a.1.gamma"):
        assert torch.equal(state[k], theirs[k].to(state[k].dtype)), k
    for k in ("net.h_a.0.weight", "net.h_s.4.weight"):
        assert torch.equal(state[k], fresh[k]), k                # not taken: fresh
    assert result.describe().endswith("kept fresh: everything but g_a, g_s, modulator, "
                                      "demodulator")
    with pytest.raises(ValueError, match=r"no weights for \['context_prediction'\]"):
        load_init(tiny(target), path, parts=["g_a", "context_prediction"])
    other = save_model(create_model("hyperprior-bm", N=24, M=16), tmp_path / "w.safetensors",
                       half=False)
    with pytest.raises(ValueError, match="shapes differ"):     # the parts must fit
        load_init(tiny(target), other, parts=["g_a"])
