"""The joint model's wavefront coder (issue 15) against CompressAI's sequential loop.

Every model here is a tiny one woken so that ``y`` codes more than 8 distinct symbols
(``tiny_models``): an identity of two coders that only ever code zeros would prove
nothing.
"""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import load_benchmark
from tiny_models import MIN_DISTINCT, coded_symbols, texture, tiny_model

from varicodec.codec.api import decode_image, encode_image
from varicodec.codec.format import PLAIN_VERSION, WAVEFRONT_VERSION, Container
from varicodec.errors import DesyncError, FormatError
from varicodec.imageio import pad_to_multiple, to_tensor
from varicodec.models.wavefront import WavefrontCoder, wavefront_slope, wavefronts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

JOINT = ["joint-base", "joint-ecg", "joint-bm", "joint-ecgbm"]
EPS = torch.finfo(torch.float32).eps


def _lm(model):
    return 0.02 if model.variable_rate else None


def _mask(k: int) -> torch.Tensor:
    m = torch.ones(1, 1, k, k)
    m[:, :, k // 2, k // 2:] = 0
    m[:, :, k // 2 + 1:] = 0
    return m


def test_wavefronts_respect_the_mask():
    assert wavefront_slope(_mask(5)) == 3  # the tap (-1, +2) rules out x + 2y
    assert wavefront_slope(_mask(3)) == 2
    assert wavefront_slope(_mask(7)) == 4
    with pytest.raises(ValueError, match="causal"):
        wavefront_slope(torch.ones(1, 1, 5, 5))
    for h, w in ((1, 1), (3, 1), (1, 7), (5, 4), (4, 12), (7, 9)):
        waves = wavefronts(h, w, 3)
        assert len(waves) == w + 3 * (h - 1)
        step = {}
        for t, (rows, cols) in enumerate(waves):
            for r, c in zip(rows.tolist(), cols.tolist()):
                assert (r, c) not in step
                step[r, c] = t
        assert len(step) == h * w  # every position exactly once
        taps = [(dy - 2, dx - 2) for dy, dx in _mask(5)[0, 0].nonzero().tolist()]
        for (r, c), t in step.items():  # every context position decoded on an earlier step
            for dh, dw in taps:
                if (r + dh, c + dw) in step:
                    assert step[r + dh, c + dw] < t


def _raster(symbols: torch.Tensor, height: int, width: int, m: int) -> torch.Tensor:
    """Wavefront-order symbols (wavefront, row, channel) in raster order (row, column,
    channel), CompressAI's sequential order."""
    order = torch.cat([r * width + c for r, c in wavefronts(height, width, 3)])
    out = torch.empty(height * width, m, dtype=symbols.dtype)
    out[order] = symbols.view(-1, m)
    return out.reshape(-1)


def _code(model, x, order):
    with coded_symbols() as seen:
        c = model.compress(x, lmbda=_lm(model), order=order)
    d = model.decompress(c["strings"], c["shape"], c["lmbda_code"], order=order)
    return c, torch.cat(seen["y"]), d


@pytest.mark.parametrize("name", JOINT)
@pytest.mark.parametrize("size", [(64, 64), (64, 192), (192, 64), (128, 128)])
def test_same_symbols_and_latent_as_sequential(name, size):
    model = tiny_model(name, alpha=0.8)
    x = texture(*size)
    c_seq, s_seq, d_seq = _code(model, x, "sequential")
    c_wf, s_wf, d_wf = _code(model, x, "wavefront")
    m, (h, w) = model.config["M"], (size[0] // 16, size[1] // 16)
    assert s_seq.unique().numel() > MIN_DISTINCT
    assert torch.equal(_raster(s_wf, h, w, m), s_seq)  # the same integers, reordered
    # the same streams otherwise: z, gate side stream; y only in another order
    assert c_wf["strings"][1] == c_seq["strings"][1]
    assert abs(len(c_wf["strings"][0][0]) - len(c_seq["strings"][0][0])) <= 8
    # ŷ = symbol + mean: the means differ at most in the last bits of a float32
    diff = (d_wf["y_hat"] - d_seq["y_hat"]).abs()
    assert float(diff.max()) <= 8 * EPS * max(1.0, float(d_seq["y_hat"].abs().max()))
    torch.testing.assert_close(d_wf["x_hat"], d_seq["x_hat"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["joint-base", "joint-ecgbm"])
def test_decoder_reproduces_the_encoders_latent_bit_for_bit(name, monkeypatch):
    """Both sides predict with the same batched arithmetic: the decoder's ŷ is the
    encoder's, every bit (not only the symbols)."""
    model = tiny_model(name, alpha=0.8)
    buffers = []
    setup = WavefrontCoder._setup

    def spy(self, params):
        out = setup(self, params)
        buffers.append(out[3])  # the padded latent, filled in place
        return out

    monkeypatch.setattr(WavefrontCoder, "_setup", spy)
    c = model.compress(texture(128, 192), lmbda=_lm(model))
    d = model.decompress(c["strings"], c["shape"], c["lmbda_code"])
    enc, dec = buffers
    assert enc.unique().numel() > MIN_DISTINCT
    assert torch.equal(enc, dec)
    assert torch.equal(dec.view(1, 12, 16, -1)[:, 2:-2, 2:-2].permute(0, 3, 1, 2), d["y_hat"])


def test_cheng2020_anchor_uses_the_same_coder():
    model = tiny_model("cheng2020-anchor-base")
    x = texture(64, 128)
    _, s_seq, d_seq = _code(model, x, "sequential")
    _, s_wf, d_wf = _code(model, x, "wavefront")
    assert s_seq.unique().numel() > MIN_DISTINCT
    assert torch.equal(_raster(s_wf, 4, 8, model.config["M"]), s_seq)
    torch.testing.assert_close(d_wf["x_hat"], d_seq["x_hat"], atol=1e-5, rtol=0)


def test_one_rans_call_per_wavefront(monkeypatch):
    from varicodec.models import wavefront as wf

    model = tiny_model("joint-base")
    x = texture(64, 128)
    calls = {"encode": 0, "decode": 0}

    class Enc(wf.RansEncoder):
        def encode_with_indexes(self, *args):
            calls["encode"] += 1
            return super().encode_with_indexes(*args)

    class Dec(wf.RansDecoder):
        def decode_stream(self, *args):
            calls["decode"] += 1
            return super().decode_stream(*args)

    monkeypatch.setattr(wf, "RansEncoder", Enc)
    monkeypatch.setattr(wf, "RansDecoder", Dec)
    c = model.compress(x)
    model.decompress(c["strings"], c["shape"])
    assert calls == {"encode": 1, "decode": len(wavefronts(4, 8, 3))}
    assert isinstance(model._coder("wavefront"), WavefrontCoder)
    with pytest.raises(ValueError, match="coding order"):
        model.compress(x, order="diagonal")


def test_bytes_identical_across_threads():
    model = tiny_model("joint-ecgbm", alpha=0.8)
    x = texture(128, 192)
    before = torch.get_num_threads()
    try:
        coded, decoded = {}, {}
        for t in (1, 2):
            torch.set_num_threads(t)
            coded[t] = model.compress(x, lmbda=0.02)
        assert coded[1]["strings"] == coded[2]["strings"]
        for t in (1, 2):
            torch.set_num_threads(t)
            c = coded[1]
            decoded[t] = model.decompress(c["strings"], c["shape"], c["lmbda_code"])["y_hat"]
    finally:
        torch.set_num_threads(before)
    assert torch.equal(decoded[1], decoded[2])


@pytest.fixture(scope="module")
def files():
    """A joint-bm model, an odd-sized image, its version-3 file and the same image as a
    version-2 file (sequential order), written the way varicodec wrote it before."""
    model = tiny_model("joint-bm")
    rgb = (texture(37, 70).mul(255).round().byte()[0].permute(1, 2, 0).numpy())
    new = encode_image(rgb, model, quality=4, compute_psnr=False).data
    c3 = Container.unpack(new)
    x = pad_to_multiple(to_tensor(rgb), model.downsampling_factor)
    old = model.compress(x, lmbda=model.lmbda_range.decode(c3.lmbda_code), order="sequential")
    c2 = dataclasses.replace(c3, version=2, y=old["strings"][0][0], z=old["strings"][1][0],
                             guard=old["strings"][-1][0])
    return model, rgb, new, c2.pack()


def test_version_2_files_still_decode(files):
    model, rgb, new, old = files
    assert new[3] == PLAIN_VERSION >= WAVEFRONT_VERSION == 3 and old[3] == 2
    assert Container.unpack(old).coding_order == "sequential"
    assert Container.unpack(new).coding_order == "wavefront"
    a, _ = decode_image(new, model)
    b, _ = decode_image(old, model)
    assert a.size == b.size == (70, 37)
    assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    # the order matters: a version-3 file read in sequential order fails its symbol check
    wrong = dataclasses.replace(Container.unpack(new), version=2).pack()
    with pytest.raises(DesyncError, match="does not match"):
        decode_image(wrong, model)


def _with_y(data: bytes, y: bytes) -> bytes:
    return dataclasses.replace(Container.unpack(data), y=y).pack()  # valid CRC


def test_corrupted_and_truncated_streams_give_a_clear_error(files):
    model, _, new, old = files
    for data in (new, old):
        y = Container.unpack(data).y
        damaged = [
            _with_y(data, y[:len(y) // 2]),                       # truncated
            _with_y(data, y[:len(y) * 7 // 8]),
            _with_y(data, bytes([y[0] ^ 0x55]) + y[1:]),           # flipped bits
            _with_y(data, y[:len(y) // 2] + bytes(len(y) - len(y) // 2)),  # zeroed
        ]
        for bad in damaged:
            with pytest.raises(FormatError, match="does not match|cannot decode"):
                decode_image(bad, model)
        with pytest.raises(FormatError, match="truncated|CRC"):
            decode_image(data[:-7], model)


def test_benchmark_without_kodak_measures_nothing(tmp_path, capsys):
    bench = load_benchmark("joint_speed")
    assert bench.main(["--data", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "nothing measured" in err and str(tmp_path / "nothing") in err


def test_benchmark_row_compares_the_two_coders():
    bench = load_benchmark("joint_speed")
    model = tiny_model("joint-ecgbm", alpha=0.8)
    rgb = texture(64, 128).mul(255).round().byte()[0].permute(1, 2, 0).numpy()
    row = bench.measure(model, bytes(8), rgb, to_tensor(rgb), repeats=2)
    seq, wf = row["sequential"], row["wavefront"]
    assert seq["psnr_db"] == wf["psnr_db"] and abs(row["rate_change_pct"]) < 1
    assert seq["bytes"] > 100 and row["y_hat_max_abs_diff"] < 1e-5
    assert min(seq["decode_s"], wf["decode_s"], row["g_s_s"]) > 0
