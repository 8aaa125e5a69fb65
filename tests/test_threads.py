"""Encoding and decoding with different thread counts give identical latents."""

import pytest
import torch
from tiny_models import compress_rich, texture, tiny_model


@pytest.mark.parametrize("name", ["hyperprior-ecgbm", "mean-ecg", "joint-ecgbm"])
def test_cross_thread_decoding(name):
    image = texture()
    model = tiny_model(name, alpha=0.8)
    lm = 0.02 if model.variable_rate else None
    before = torch.get_num_threads()
    try:
        encoded, decoded = {}, {}
        for t in (1, 2):
            torch.set_num_threads(t)
            encoded[t] = compress_rich(model, image, lmbda=lm)
        assert encoded[1]["strings"] == encoded[2]["strings"]
        for te in (1, 2):
            for td in (1, 2):
                torch.set_num_threads(td)
                c = encoded[te]
                decoded[te, td] = model.decompress(c["strings"], c["shape"], c["lmbda_code"])
    finally:
        torch.set_num_threads(before)
    ref = decoded[1, 1]["y_hat"]
    for d in decoded.values():
        assert torch.equal(d["y_hat"], ref)
