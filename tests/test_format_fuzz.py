"""A CI-sized run of benchmarks/fuzz_format.py: damaged files end in clean errors."""

import pytest
import torch
from conftest import load_benchmark
from tiny_models import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")
fuzz_format = load_benchmark("fuzz_format")


def test_fuzz_300_cases():
    torch.manual_seed(0)
    model = tiny_model("hyperprior-ecgbm")
    r = fuzz_format.fuzz(model, cases=300, seed=0, recrc=0.3, timeout_s=30.0)
    assert r["failures"] == []
    assert sum(r["outcomes"].values()) == 300
    assert r["outcomes"]["FormatError"] > 100  # most damage is caught by the parser / CRC
    assert r["outcomes"]["image"] > 0  # CRC-fixed damage inside a stream decodes to an image


def test_mutations_cover_every_kind():
    import numpy as np

    rng = np.random.default_rng(0)
    kinds = {fuzz_format.mutate(b"VCD\x01" + bytes(40), [b"VCD\x01" + bytes(9)], rng, 0.5)[0]
             for _ in range(200)}
    assert {k.removesuffix("+crc") for k in kinds} == set(fuzz_format.MUTATIONS)


def test_crafted_sizes_do_not_crash_the_entropy_decoder():
    # fuzz case 5964 (seed 1) before the guard: a CRC-valid header claiming
    # 1×25854 pixels with a 1-byte z stream made CompressAI's rANS decoder read
    # ~0.5 MB past its buffer and segfault
    from varicodec.codec import decode
    from varicodec.codec.format import Container
    from varicodec.codec.pretrained import fingerprint

    model = tiny_model("hyperprior-ecgbm")
    from varicodec.errors import DesyncError

    for z, y in ((b"\xf2", b""), (b"", b""), (b"\xff" * 64, b"\xff" * 300)):
        # (format version 2) an arbitrary symbol check: a garbage stream decodes to
        # symbols that fail it, which is reported instead of a picture
        c = Container(model_name=model.name, fingerprint=fingerprint(model), width=1,
                      height=25854, y=y, z=z, lmbda_code=5632, guard=bytes(4))
        with pytest.raises(DesyncError):
            decode(c.pack(), model)

