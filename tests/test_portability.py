"""Decode anywhere (issue 14): the scale-index guard, the symbol check, other kernels.

Float noise between machines moves the scales ``h_s`` (and the joint model's
entropy-parameter network) predicts by ~1e-6 relative; an index that flips across
a scale-table boundary desynchronises rANS. These tests place scales on the
boundaries on purpose, perturb the decoder's by ±1e-5 relative, and check that the
guard keeps the symbols and that without it the symbol check reports the desync.
"""

import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from varicodec.errors import DesyncError
from varicodec.models.guard import (
    HASH_THRESHOLD,
    INDEX_MARGIN,
    HashSet,
    IndexGuard,
    _choose_hash,
    _guard_hash,
    _hash_rule,
    _near_boundaries,
    _nearest_boundary,
    _scale_indexes,
    pack_guard,
    unpack_guard,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_guard_stream_roundtrip_and_malformed_streams():
    rng = np.random.default_rng(0)
    for n, per_item in ((0, 10), (1, 1), (5, 5), (40, 300_000), (2000, 4000)):
        pos = np.sort(rng.choice(per_item, n, replace=False))
        data = pack_guard(0xDEADBEEF, pos)
        check, back = unpack_guard(data, per_item)
        assert check == 0xDEADBEEF and np.array_equal(back, pos)
    data = pack_guard(7, np.array([3, 17, 250_000]))
    assert len(data) < 4 + 1 + 1 + 3 * 4  # Rice-coded gaps: a few bytes per latent
    for bad in (data[:3], data[:-1], data[:5] + b"\x19" + data[6:]):
        with pytest.raises(ValueError):
            unpack_guard(bad, 300_000)
    with pytest.raises(ValueError, match="outside"):
        unpack_guard(data, 250_000)


def _scale_channels(model) -> int:
    return model.config["M"]


def _snap_to_boundaries(model, rel: float = 3e-6, boundary=lambda c: (c * 7) % 50 + 5):
    """Hooks that put every other scale (even channels ``c``) a relative ±``rel`` from
    table boundary ``boundary(c)`` (the same values at encode and decode; the default
    well inside the guard's margin)."""
    gc = model.net.gaussian_conditional
    table = gc.scale_table[:-1]
    m = _scale_channels(model)

    def hook(module, inputs, out):
        c = torch.arange(m).view(1, m, 1, 1)
        sign = torch.where(c % 4 == 0, 1.0, -1.0)
        target = (table[boundary(c)] * (1 + rel * sign)).expand(out[:, :m].shape)
        out = out.clone()
        out[:, :m] = torch.where(c % 2 == 0, target, out[:, :m])
        return out

    return [_scale_module(model).register_forward_hook(hook)]


def _scale_module(model):
    """The module whose output holds the scales the guard indexes."""
    return model.net.entropy_parameters if model.arch == "joint" else model.net.h_s


def _perturb(model, rel: float = 1e-5, seed: int = 0):
    """Hooks that multiply the decoder's predicted parameters by 1 + U(−rel, rel)."""
    g = torch.Generator().manual_seed(seed)

    def hook(module, inputs, out):
        noise = (torch.rand(out.shape, generator=g, dtype=torch.float64) * 2 - 1) * rel
        return (out.double() * (1 + noise)).to(out.dtype)

    modules = [model.net.h_s] + ([model.net.entropy_parameters] if model.arch == "joint" else [])
    return [mod.register_forward_hook(hook) for mod in modules]


@pytest.mark.parametrize("mode", ["hash", "positions"])
@pytest.mark.parametrize("name", ["hyperprior-ecgbm", "mean-bm", "joint-base"])
def test_perturbed_decoder_keeps_the_symbols(name, mode, image):
    model = tiny(name).eval()
    model.update()
    lm = 0.02 if model.variable_rate else None
    hooks = _snap_to_boundaries(model)
    try:
        guarded = model.compress(image, lmbda=lm, guard_mode=mode)
        unguarded = model.compress(image, lmbda=lm, index_margin=0.0)
        ref = model.decompress(guarded["strings"], guarded["shape"], guarded["lmbda_code"])
        guard = guarded["strings"][-1][0]
        _, named = unpack_guard(guard, model._latents_per_item(guarded["shape"]))
        if mode == "hash":  # the wavefront coder shows the guard whole batch elements too
            assert isinstance(named, HashSet) and len(named.values) > 1
        else:
            assert len(named) >= model.config["M"] // 2  # every snapped scale is guarded
        assert len(unguarded["strings"][-1][0]) == 4  # the check alone
        hooks += _perturb(model)
        # with the guard: the same symbols, so the same latent up to the means' noise
        out = model.decompress(guarded["strings"], guarded["shape"], guarded["lmbda_code"])
        assert torch.allclose(out["y_hat"], ref["y_hat"], atol=1e-3)
        if model.arch == "hyperprior":  # zero means: the symbols themselves
            assert torch.equal(out["y_hat"], ref["y_hat"])
        # without it: the same perturbation desynchronises rANS, and the check says so
        with pytest.raises(DesyncError):
            model.decompress(unguarded["strings"], unguarded["shape"], unguarded["lmbda_code"])
    finally:
        for h in hooks:
            h.remove()


def test_default_margin_covers_the_injected_noise():
    # the perturbation above must lie inside what the encoder guards by default
    assert INDEX_MARGIN >= 1e-5


def test_altered_symbol_check_is_an_error_naming_the_file(tmp_path, capsys):
    from varicodec.cli import main
    from varicodec.codec import encode
    from varicodec.codec.format import Container
    from varicodec.models import save_model

    model = tiny("hyperprior-bm").eval()
    model.update()
    weights = str(save_model(model, tmp_path / "m.safetensors"))
    rng = np.random.default_rng(0)
    pixels = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    c = Container.unpack(encode(pixels, weights, quality=3))
    assert c.guard is not None and len(c.guard) >= 4
    (check,) = struct.unpack(">I", c.guard[:4])
    bad = Container(**{**c.__dict__, "guard": struct.pack(">I", check ^ 1) + c.guard[4:]})
    path = tmp_path / "desync.vcd"
    path.write_bytes(bad.pack())  # valid CRC-32: only the symbol check disagrees
    out = tmp_path / "out.png"
    assert main(["decode", str(path), "-o", str(out), "--model", weights]) == 2
    err = capsys.readouterr().err
    assert "desync.vcd" in err and "symbol check" in err
    assert not out.exists()


_CHILD = r"""
import sys, numpy as np, torch
from varicodec.codec import decode, encode
from varicodec.codec.api import decode_image
torch.set_num_threads(int(sys.argv[3]))
src, out = sys.argv[1], sys.argv[2]
np.save(out + ".npy", np.asarray(decode(open(src, "rb").read())))
pixels = np.load(src + ".src.npy")
open(out + ".vcd", "wb").write(encode(pixels, quality=float(sys.argv[4])))
"""


@pytest.mark.parametrize("isa", ["SSE41", "AVX2"])
def test_encode_default_kernels_decode_older_kernels_and_back(tmp_path, isa):
    """The bundled model on a small image: the file written with the default oneDNN
    kernels decodes under ``ONEDNN_MAX_CPU_ISA=isa`` (another process) and the
    other way round, the symbol check passing both ways."""
    from varicodec.codec import decode, encode
    from varicodec.codec.pretrained import bundled_path

    if not bundled_path("hyperprior-ecgbm").is_file():
        pytest.skip("bundled hyperprior-ecgbm weights not found")
    rng = np.random.default_rng(1)
    small = rng.random((6, 8, 3))
    pixels = (np.kron(small, np.ones((24, 24, 1))) * 255).astype(np.uint8)  # 144×192
    quality = 1.0
    src = tmp_path / "default.vcd"
    src.write_bytes(encode(pixels, quality=quality))
    np.save(str(src) + ".src.npy", pixels)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": isa, "ATEN_CPU_CAPABILITY": "default"}
    out = str(tmp_path / isa)
    subprocess.run([sys.executable, "-c", _CHILD, str(src), out, "1", str(quality)],
                   env=env, check=True, timeout=300)
    here = np.asarray(decode(src.read_bytes())).astype(int)
    there = np.load(out + ".npy").astype(int)
    assert np.abs(here - there).max() <= 2  # g_s float noise only; never a desync
    # the reverse: written with the older kernels, decoded here (the check passes)
    back = np.asarray(decode(Path(out + ".vcd").read_bytes())).astype(int)
    assert np.abs(back - here).mean() < 1.0  # another encode (g_a noise), same image


def _perturb_scales(model, rel: float, seed: int = 0):
    """A hook that multiplies the predicted scales by 1 + U(−rel, rel)."""
    g = torch.Generator().manual_seed(seed)
    m = _scale_channels(model)

    def hook(module, inputs, out):
        noise = (torch.rand(out[:, :m].shape, generator=g, dtype=torch.float64) * 2 - 1) * rel
        out = out.clone()
        out[:, :m] = (out[:, :m].double() * (1 + noise)).to(out.dtype)
        return out

    return _scale_module(model).register_forward_hook(hook)


@pytest.mark.parametrize("mode", ["hash", "positions"])
@pytest.mark.parametrize("name", ["mean-bm", "joint-base"])
def test_absolute_margin_guards_small_scales(name, mode, image):
    """Format version 5: a mean-scale or joint model's small scales move by float noise
    that is absolute (~4e-6), i.e. several times ``INDEX_MARGIN`` relative at the
    lowest boundaries; the margin there is ``ABSOLUTE_MARGIN / t``. Scales placed a
    relative 1.5e-5 from boundaries 7-9, decoded with ±2.5e-5 relative noise: the
    same symbols with the version 5 guard, a desync (caught) with version 4's."""
    from varicodec.models.guard import ABSOLUTE_MARGIN, INDEX_MARGIN, absolute_margin

    model = tiny(name, lmbda=0.18).eval()  # fixed-rate λ; the bm model gets it below
    model.update()
    lm = 0.18 if model.variable_rate else None
    table = model.net.gaussian_conditional.scale_table[:-1]
    assert absolute_margin(0.18) == ABSOLUTE_MARGIN
    assert ABSOLUTE_MARGIN / float(table[9]) > 2.5e-5 > 1.5e-5 > INDEX_MARGIN
    # boundaries 7-9 (scales 0.26-0.33), where the margin is ABSOLUTE_MARGIN / t
    hooks = _snap_to_boundaries(model, 1.5e-5, lambda c: c % 3 + 7)
    try:
        v5 = model.compress(image, lmbda=lm, guard_mode=mode)
        v4 = model.compress(image, lmbda=lm, guard_mode=mode, absolute_margin=False)
        ref = model.decompress(v5["strings"], v5["shape"], v5["lmbda_code"])
        _, named = unpack_guard(v5["strings"][-1][0], model._latents_per_item(v5["shape"]))
        if mode == "hash":
            assert isinstance(named, HashSet)
        else:
            assert len(named) >= model.config["M"] // 2  # every snapped scale is guarded
        hooks.append(_perturb_scales(model, 2.5e-5))
        out = model.decompress(v5["strings"], v5["shape"], v5["lmbda_code"])
        assert torch.allclose(out["y_hat"], ref["y_hat"], atol=1e-3)
        with pytest.raises(DesyncError):
            model.decompress(v4["strings"], v4["shape"], v4["lmbda_code"],
                             absolute_margin=False)
    finally:
        for h in hooks:
            h.remove()


def test_absolute_margin_only_for_mean_and_joint():
    from varicodec.models.guard import ABSOLUTE_MARGIN, INDEX_MARGIN, absolute_margin

    hyper, mean = tiny("hyperprior-bm"), tiny("mean-bm")
    mean.update()
    assert hyper._boundary_widths(True, 0.18) is None
    assert mean._boundary_widths(False, 0.18) is None
    widths = mean._boundary_widths(True, 0.18)
    table = mean.net.gaussian_conditional.scale_table[:-1].double()
    # margin·width = max(INDEX_MARGIN, ABSOLUTE_MARGIN / t): absolute below t = 1
    assert torch.allclose(INDEX_MARGIN * widths * table,
                          torch.clamp(INDEX_MARGIN * table, min=ABSOLUTE_MARGIN))
    assert widths[0] > 9 and widths[-1] == 1
    k, dist = _nearest_boundary(table[:3] * (1 + 4e-5), table, widths)
    assert k.tolist() == [0, 1, 2] and (dist < INDEX_MARGIN).all()
    # below CompressAI's quality 8 the absolute margin shrinks as λ^⅓
    assert absolute_margin(0.18 / 8) == pytest.approx(ABSOLUTE_MARGIN / 2)
    assert absolute_margin(0.5) == ABSOLUTE_MARGIN
    low = mean._boundary_widths(True, 0.18 / 8)
    assert torch.allclose(low, torch.clamp(widths / 2, min=1.0))


def test_nearest_boundary_at_and_beyond_the_table_ends():
    table = torch.tensor([0.11, 0.2, 0.4, 0.8])
    scales = torch.tensor([0.05, 0.11, 0.21, 0.59, 0.61, 0.8, 5.0])
    k, dist = _nearest_boundary(scales, table)
    # below the first / above the last boundary: the end boundaries, not an index error
    assert k.tolist() == [0, 0, 1, 2, 3, 3, 3]
    want = (scales.double() / table.double()[k] - 1).abs()
    assert torch.allclose(dist, want)
    assert dist[1] == 0 and dist[5] == 0


def test_scale_indexes_are_compressais_build_indexes():
    from compressai.entropy_models import GaussianConditional

    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    table = gc.scale_table
    gen = torch.Generator().manual_seed(0)
    scales = torch.cat([
        torch.exp(torch.empty(20000).uniform_(np.log(0.01), np.log(400), generator=gen)),
        table, torch.nextafter(table, torch.zeros(())), torch.nextafter(table, table + 1),
        torch.tensor([0.0, -1.0, float("inf"), float("nan")]),
    ]).view(4, -1, 1)  # any shape: 4 × n × 1
    want = GaussianConditional.build_indexes(gc, scales)
    got = _scale_indexes(gc, scales)
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    assert len(set(got.reshape(-1).tolist())) == 64  # every index met


def test_guard_positions_split_per_batch_element():
    guard = IndexGuard.__new__(IndexGuard)
    guard.positions = [torch.tensor([1, 5]), torch.tensor([8, 10, 15])]
    got = guard.item_positions(batch=2, per_item=8)
    assert [p.tolist() for p in got] == [[1, 5], [0, 2, 7]]
    guard.positions = []
    assert [p.tolist() for p in guard.item_positions(batch=2, per_item=8)] == [[], []]


# ------------------------------------------------------------------ hash mode
def test_guard_hash_pinned_values():
    # murmur3's finaliser of number XOR (seed * 0x9E3779B9 mod 2**32): part of format
    # version 4 (docs/FORMAT.md); a change here makes old files decode wrong
    got = _guard_hash(np.array([0, 1, 2, 294_911, 2**32 - 1]), 0).tolist()
    assert got == PINNED_SEED_0
    assert _guard_hash(np.array([0, 1, 12345]), 5).tolist() == PINNED_SEED_5


def test_hash_rule_gives_the_same_mask_in_python_integers_and_in_numpy():
    """The decoder's hash rule hashes up to _HASH_RULE_INT latents in Python integers,
    more in numpy: both give the pinned hashes and the same mask."""
    from varicodec.models import guard as gm

    numbers = [0, 1, 2, 294_911, 2**32 - 1]
    assert [gm._guard_hash_int(n, 0) for n in numbers] == PINNED_SEED_0
    assert [gm._guard_hash_int(n, 5) for n in (0, 1, 12345)] == PINNED_SEED_5
    rng = np.random.default_rng(3)
    for seed in range(4):
        nums = rng.integers(0, 300_000, 200)
        assert [gm._guard_hash_int(int(n), seed) for n in nums] == \
            _guard_hash(nums, seed).tolist()
        bits = 6
        top = (_guard_hash(nums, seed) >> np.uint64(32 - bits)).astype(np.int64)
        hashed = HashSet(bits, seed, np.unique(top[::3]).astype(np.uint64))
        dist = rng.uniform(0, 2 * HASH_THRESHOLD, len(nums))
        whole = _hash_rule(nums, dist, hashed)  # 200 latents: numpy
        assert whole.any() and not whole.all()
        for lo in range(0, len(nums), gm._HASH_RULE_INT):  # the Python-integer path
            part = slice(lo, lo + gm._HASH_RULE_INT)
            assert _hash_rule(nums[part], dist[part], hashed).tolist() == whole[part].tolist()


PINNED_SEED_0 = [0, 1364076727, 821347078, 540522742, 2180083513]  # fmix32(1) = 0x514E28B7
PINNED_SEED_5 = [1215922603, 280495159, 3067021729]


def _scales_at(table: torch.Tensor, rel: np.ndarray, rng) -> torch.Tensor:
    """Scales at a relative distance ``rel`` (signed) from random inner boundaries."""
    k = torch.from_numpy(rng.integers(1, len(table) - 1, len(rel)))
    return table.double()[k] * (1 + torch.from_numpy(rel))


def test_hash_selection_avoids_the_danger_band_and_survives_noise():
    from compressai.entropy_models import GaussianConditional

    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    table = gc.scale_table[:-1]
    rng = np.random.default_rng(3)
    sign = lambda n: rng.choice([-1.0, 1.0], n)  # noqa: E731
    margin = INDEX_MARGIN
    rel = np.concatenate([
        sign(30) * rng.uniform(0, margin * 0.7, 30),  # inside G
        sign(60) * (HASH_THRESHOLD + rng.uniform(-margin * 0.9, margin * 0.9, 60)),  # danger
        sign(40) * rng.uniform(HASH_THRESHOLD + margin, 4 * HASH_THRESHOLD, 40),  # beyond
        sign(20000) * rng.uniform(0.001, 0.06, 20000),  # far away
    ])
    order = rng.permutation(len(rel))
    scales = _scales_at(table, rel[order], rng).float()
    k, dist = _nearest_boundary(scales, table)
    d = dist.numpy()
    cand = np.flatnonzero(d < HASH_THRESHOLD + margin)
    hashed, mask = _choose_hash(cand, d[cand], margin)
    top = _guard_hash(cand, hashed.seed) >> np.uint64(32 - hashed.bits)
    in_h = np.isin(top, hashed.values)
    danger = np.abs(d[cand] - HASH_THRESHOLD) < margin
    assert danger.sum() >= 50 and not (in_h & danger).any()  # no danger latent hashed
    g = set(np.flatnonzero(d < margin).tolist())
    forced = set(cand[mask].tolist())
    assert len(g) >= 25 and g <= forced  # the forced set holds G
    # the encoder's indexes: forced latents k + 1, the rest build_indexes
    want = _scale_indexes(gc, scales).view(-1).clone()
    sel = torch.from_numpy(cand[mask])
    want[sel] = (k[sel] + 1).int()
    # a decoder whose scales are off by up to ±3e-6 relative computes the same ones
    for seed in range(3):
        noise = torch.from_numpy(np.random.default_rng(seed).uniform(-3e-6, 3e-6, len(rel)))
        noisy = (scales.double() * (1 + noise)).float()
        got = _scale_indexes(gc, noisy).view(-1).clone()
        pos, dk, dd = _near_boundaries(gc, noisy, got, HASH_THRESHOLD)
        rule = torch.from_numpy(_hash_rule(pos.numpy(), dd.numpy(), hashed))
        assert set(pos[rule].tolist()) == forced
        got[pos[rule]] = (dk[rule] + 1).int()
        assert torch.equal(got, want)
    # and without the forcing, that noise does flip indexes (the test can fail)
    assert not torch.equal(_scale_indexes(gc, noisy).view(-1), want)


def test_near_boundaries_is_the_exact_distance_on_a_preselection():
    from compressai.entropy_models import GaussianConditional

    gc = GaussianConditional(None)
    gc.update_scale_table(torch.exp(torch.linspace(np.log(0.11), np.log(256), 64)))
    table = gc.scale_table[:-1]
    rng = np.random.default_rng(5)
    near = _scales_at(table, rng.uniform(-4e-5, 4e-5, 3000), rng)
    ends = torch.tensor([0.11, 0.11 * (1 - 1e-5), 0.05, -1.0, 0.0, float("nan"),
                         float("inf"), float(table[-1]) * (1 + 1e-5), 400.0], dtype=torch.float64)
    far = torch.exp(torch.from_numpy(rng.uniform(np.log(0.01), np.log(400), 19991)))
    scales = torch.cat([near, ends, far]).float().view(2, -1)
    idx = _scale_indexes(gc, scales)
    for within in (1e-5, 3e-5):
        pos, k, dist = _near_boundaries(gc, scales, idx, within)
        wk, wd = _nearest_boundary(scales, table)
        want = (wd < within).nonzero().squeeze(1)
        assert len(want) > 500 and torch.equal(pos, want)
        assert torch.equal(k, wk[want]) and torch.equal(dist, wd[want])


def test_hash_selection_gives_up_when_the_margin_leaves_no_threshold():
    d = np.array([0.0, HASH_THRESHOLD * 0.5])  # in G and within the margin of T
    assert _choose_hash(np.arange(2), d, margin=HASH_THRESHOLD * 0.55) is None
    assert _choose_hash(np.arange(2), np.array([0.5, 0.7]) * HASH_THRESHOLD, 1e-6) is None


def test_hash_guard_stream_roundtrip_and_malformed_streams():
    rng = np.random.default_rng(1)
    for n, bits, seed in ((1, 1, 0), (3, 6, 15), (26, 10, 7), (500, 20, 3), (3000, 24, 2)):
        values = np.sort(rng.choice(min(1 << bits, 10**9), n, replace=False))
        data = pack_guard(0x01020304, np.zeros(0, np.int64), HashSet(bits, seed, values))
        check, back = unpack_guard(data, 1000)
        assert check == 0x01020304 and isinstance(back, HashSet)
        assert (back.bits, back.seed) == (bits, seed) and np.array_equal(back.values, values)
    data = pack_guard(9, np.zeros(0), HashSet(10, 4, np.array([3, 100, 1000])))
    assert data[5] >= 32  # the mode byte: hash mode
    bad = (data[:5], data[:6], data[:7], data[:-1],  # truncated
           data[:4] + b"\x80\x80\x40\xff\x00" + bytes(99),  # 2**20 hashes of 34 bits
           data[:6] + b"\x19" + data[7:],  # Rice parameter above 24
           data[:5] + b"\x1f" + data[6:])  # neither mode
    for b in bad:
        with pytest.raises(ValueError, match="guard stream"):
            unpack_guard(b, 300_000)
    with pytest.raises(ValueError, match="out of range"):  # 1000 is no 9-bit value
        unpack_guard(data[:5] + bytes([32 + 16 * 7 + 4]) + data[6:], 300_000)


def test_sequential_joint_order_keeps_positions_mode(image):
    model = tiny("joint-base").eval()
    model.update()
    hooks = _snap_to_boundaries(model)
    try:
        out = model.compress(image, order="sequential", guard_mode="hash")
        _, named = unpack_guard(out["strings"][-1][0],
                                 model._latents_per_item(out["shape"]))
        assert not isinstance(named, HashSet) and len(named) >= model.config["M"] // 2
        ref = model.compress(image, order="wavefront", guard_mode="hash")
        back = model.decompress(out["strings"], out["shape"], order="sequential")
        want = model.decompress(ref["strings"], ref["shape"])
        assert torch.allclose(back["y_hat"], want["y_hat"], atol=1e-3)
    finally:
        for h in hooks:
            h.remove()


def test_damaged_hash_guards_end_in_clean_errors(image):
    """Random damage to a hash-mode guard stream: a ``ValueError`` from the parser,
    a ``DesyncError`` from the symbol check, or (damage that leaves the forced set as
    it was) the same latent; never another exception or a different latent."""
    model = tiny("hyperprior-ecgbm").eval()
    model.update()
    hooks = _snap_to_boundaries(model)
    try:
        out = model.compress(image, lmbda=0.02, guard_mode="hash")
        guard = out["strings"][-1][0]
        assert isinstance(unpack_guard(guard, 10**9)[1], HashSet)
        ref = model.decompress(out["strings"], out["shape"], out["lmbda_code"])["y_hat"]
        rng = np.random.default_rng(0)
        outcomes = {"ValueError": 0, "DesyncError": 0, "same": 0}
        for _ in range(150):
            data = bytearray(guard)
            kind = rng.integers(3)
            at = int(rng.integers(4, len(data)))  # the check itself is covered elsewhere
            if kind == 0:
                data[at] ^= 1 << int(rng.integers(8))
            elif kind == 1:
                del data[at:]
            else:
                data[at:at] = rng.bytes(int(rng.integers(1, 4)))
            strings = out["strings"][:-1] + [[bytes(data)]]
            try:
                y = model.decompress(strings, out["shape"], out["lmbda_code"])["y_hat"]
            except DesyncError:
                outcomes["DesyncError"] += 1
            except ValueError:
                outcomes["ValueError"] += 1
            else:
                assert torch.equal(y, ref)
                outcomes["same"] += 1
        assert outcomes["ValueError"] > 20 and outcomes["DesyncError"] > 10
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("name", ["hyperprior-ecgbm", "joint-base"])
def test_hash_mode_per_batch_element(name, image):
    """Two images in one batch: each element gets its own hash-mode guard (the
    hyperprior shows the guard both in one call, the wavefront coder one at a time),
    and a perturbed decoder keeps both elements' symbols."""
    model = tiny(name).eval()
    model.update()
    lm = 0.02 if model.variable_rate else None
    x = torch.cat([image, image.flip(-1)])
    hooks = _snap_to_boundaries(model)
    try:
        out = model.compress(x, lmbda=lm, guard_mode="hash")
        per_item = model._latents_per_item(out["shape"])
        sets = [unpack_guard(g, per_item)[1] for g in out["strings"][-1]]
        assert all(isinstance(h, HashSet) for h in sets)
        ref = model.decompress(out["strings"], out["shape"], out["lmbda_code"])["y_hat"]
        one = model.compress(x[1:], lmbda=lm, guard_mode="hash")
        assert one["strings"][-1][0] == out["strings"][-1][1]  # the same as coded alone
        hooks += _perturb(model)
        got = model.decompress(out["strings"], out["shape"], out["lmbda_code"])["y_hat"]
        assert torch.allclose(got, ref, atol=1e-3)
    finally:
        for h in hooks:
            h.remove()


def test_coding_on_cuda_turns_tf32_off_and_restores_it():
    """TF32 rounds convolutions ~10⁻³ relative, far beyond the guard's margin: a model on a
    GPU codes in true float32, and the user's flags come back afterwards."""
    import types

    from varicodec.models.codec_model import _full_float32

    class Fake:
        def __init__(self, device):
            self.device = torch.device(device)

        def parameters(self):
            yield types.SimpleNamespace(device=self.device)

        @_full_float32
        def code(self):
            return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32

    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        assert Fake("cuda").code() == (False, False)
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (
            True, True)
        assert Fake("cpu").code() == (True, True)          # the CPU path changes nothing
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def test_decoder_takes_the_margin_from_the_format_version(monkeypatch):
    """A version 5 file is decoded with the absolute margin, a version 4 one without."""
    import dataclasses

    from varicodec.codec import encode
    from varicodec.codec.api import decode_image
    from varicodec.codec.format import Container

    model = tiny("mean-bm").eval()
    model.update()
    rng = np.random.default_rng(0)
    data = encode((rng.random((64, 64, 3)) * 255).astype(np.uint8), model, quality=3)
    seen = []
    original = model.decompress

    def spy(*args, **kw):
        seen.append(kw.get("absolute_margin"))
        return original(*args, **kw)

    monkeypatch.setattr(model, "decompress", spy)
    c = Container.unpack(data)
    assert c.version == 5 and c.absolute_margin
    decode_image(data, model)
    decode_image(dataclasses.replace(c, version=4).pack(), model)
    assert seen == [True, False]
