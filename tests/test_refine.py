"""Encoder-side latent refinement (varicodec.models.refine, ``encode --refine``)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from tiny_models import texture, tiny_model

from varicodec.codec import decode, encode, encode_image
from varicodec.codec.pretrained import resolve_model
from varicodec.eval.runner import VaricodecCoder
from varicodec.imageio import to_uint8
from varicodec.metrics import psnr_db
from varicodec.models.refine import (
    _sga,
    check_refinable,
    check_steps,
    fixed_latents,
    refine_latents,
)
from varicodec.quality import quality_to_lmbda

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def photo():
    """64×96 RGB with edges and texture (uint8)."""
    return to_uint8(texture(64, 96, seed=3))


def rd_cost(data: bytes, decoded: np.ndarray, original: np.ndarray, lmbda: float) -> float:
    """The file's real cost: bytes × 8 / pixels + λ·255²·MSE."""
    h, w = original.shape[:2]
    mse = 10 ** (-psnr_db(original, decoded) / 10)  # psnr_db is over a 255 peak
    return len(data) * 8 / (h * w) + lmbda * 255**2 * mse


@pytest.mark.parametrize("quality", [2, 6])
def test_refinement_lowers_the_files_real_cost(photo, quality):
    """Bundled default: real bytes + real decoded PSNR, with and without refinement."""
    lm = quality_to_lmbda(quality)
    plain = encode(photo, quality=quality)
    refined = encode(photo, quality=quality, refine=25)
    assert refined != plain
    cost = {k: rd_cost(d, np.asarray(decode(d)), photo, lm)
            for k, d in (("plain", plain), ("refined", refined))}
    assert cost["refined"] < 0.97 * cost["plain"], cost


def test_refined_files_are_ordinary_files(photo):
    """Same header and decoder; the reported PSNR is the decoded file's; one machine and
    thread count refine to the same bytes; ``refine=0`` is the plain encoder."""
    r = encode_image(photo, quality=4, refine=10)
    again = encode_image(photo, quality=4, refine=10)
    assert r.data == again.data
    out = np.asarray(decode(r.data))
    assert out.shape == photo.shape
    assert r.psnr_db == pytest.approx(psnr_db(photo, out), abs=1e-6)
    assert encode(photo, quality=4, refine=0) == encode(photo, quality=4)


def test_refinement_in_tiles_and_fixed_rate(photo):
    vr = tiny_model("hyperprior-ecgbm", 0)
    tiled = encode_image(photo, vr, quality=3, tile=64, tile_margin=8, refine=3)
    assert np.asarray(decode(tiled.data, vr)).shape == photo.shape
    fixed = tiny_model("mean-base", 0)
    data = encode(photo, fixed, refine=3)
    assert np.asarray(decode(data, fixed)).shape == photo.shape


def test_relaxed_cost_falls_and_transforms_are_restored():
    m = resolve_model(None)
    x = texture(64, 64, seed=5)
    g_a, h_a = m.net.g_a, m.net.h_a
    requires = [p.requires_grad for p in m.parameters()]
    r = refine_latents(m, x, quality_to_lmbda(4), 30)
    assert r.cost_end < r.cost_start
    assert m.net.g_a is g_a and m.net.h_a is h_a
    assert [p.requires_grad for p in m.parameters()] == requires
    assert all(p.grad is None for p in m.parameters())
    assert not m.training


def test_fixed_latents_are_what_compress_codes():
    """``compress`` under :func:`fixed_latents` codes the given latents: the plain
    encoder's own ``y`` and ``z`` give the plain encoder's streams, others do not."""
    m = tiny_model("mean-bm", 0)
    x = texture(64, 64)
    lm = m.lmbda_range.decode(m.lmbda_range.encode(0.01))
    seen = {}
    hooks = [m.net.g_a.register_forward_hook(lambda mod, i, o: seen.setdefault("y", o)),
             m.net.h_a.register_forward_hook(lambda mod, i, o: seen.setdefault("z", o))]
    plain = m.compress(x, lm)  # y as coded: the modulator's hook ran first
    for h in hooks:
        h.remove()
    with fixed_latents(m, seen["y"], seen["z"]):
        fixed = m.compress(x, lm)
    assert fixed["strings"][:2] == plain["strings"][:2]
    with fixed_latents(m, seen["y"] + 3.0, seen["z"]):
        moved = m.compress(x, lm)
    assert moved["strings"][0] != plain["strings"][0]


def test_sga_brackets_rounding():
    g = torch.Generator().manual_seed(0)
    v = torch.linspace(-3, 3, 601)
    for tau in (0.5, 0.05):
        s = _sga(v, tau, g)
        assert torch.all(s >= torch.floor(v)) and torch.all(s <= torch.floor(v) + 1)
    # nearly hard at a low temperature: values far from a half sit at their rounding
    far = (v - torch.round(v)).abs() < 0.3
    assert torch.allclose(_sga(v, 0.01, g)[far], torch.round(v)[far], atol=1e-3)


def test_errors_are_one_line():
    with pytest.raises(ValueError, match="joint"):
        check_refinable(tiny_model("joint-base", 0))
    for bad in (-1, 1.5, True, 10**6):
        with pytest.raises(ValueError, match="refinement steps"):
            check_steps(bad)
    img = to_uint8(texture(64, 64))
    with pytest.raises(ValueError, match="not a bpp/psnr target"):
        encode(img, bpp=0.5, refine=5)
    with pytest.raises(ValueError, match="joint"):
        encode(img, tiny_model("joint-bm", 0), quality=3, refine=5)


def test_cli_refine(tmp_path, photo):
    from PIL import Image

    src = tmp_path / "a.png"
    Image.fromarray(photo).save(src)
    cmd = [sys.executable, "-m", "varicodec", "encode", str(src), "--json", "--quiet"]
    out = subprocess.run([*cmd, "--quality", "3", "--refine", "5"], capture_output=True,
                         text=True, check=True)
    record = json.loads(out.stdout)
    assert record["refine"] == 5 and (tmp_path / "a.vcd").stat().st_size == record["bytes"]
    bad = subprocess.run([*cmd, "--refine", "-2", "-f"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "refinement steps" in bad.stderr
    bad = subprocess.run([*cmd, "--bpp", "0.3", "--refine", "2", "-f"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a bpp/psnr target" in bad.stderr


def test_eval_records_refinement():
    coder = VaricodecCoder(refine=4)
    assert coder.refine == 4 and "--refine 4" in coder.name
    assert VaricodecCoder().refine == 0
    with pytest.raises(ValueError, match="refinement steps"):
        VaricodecCoder(refine=-1)


def test_refined_files_keep_the_portability_guard(photo):
    """The guard stream covers refined latents too: a decoder whose h_s is off by
    ±1e-5 relative (another machine's kernels) decodes the same pixels."""
    from test_portability import _perturb

    m = resolve_model(None)
    data = encode(photo, m, quality=2, refine=10)
    ref = np.asarray(decode(data, m))
    hooks = _perturb(m)
    try:
        out = np.asarray(decode(data, m))
    finally:
        for h in hooks:
            h.remove()
    assert np.array_equal(out, ref)
