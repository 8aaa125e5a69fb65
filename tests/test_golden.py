"""Golden ``.vcd`` files: every readable format version keeps decoding to the same thing.

tests/golden/ holds, per entry of ``scripts/make_golden.py``, a ``.vcd`` file written
by a tiny committed ``joint-ecgbm`` model, the sha256 of the symbols a decoder must
entropy-decode from it and the picture it decoded to. A change of the container
layout, of a version's coding order or of the decoder's arithmetic on the latent
fails here; regenerate only together with a new format version.
"""

import dataclasses
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varicodec.codec.format import READABLE_VERSIONS, Container
from varicodec.models import load_model

GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFEST = json.loads((GOLDEN / "golden.json").read_text())
ENTRIES = MANIFEST["entries"]


def _generator():
    """scripts/make_golden.py as a module (its entries and its symbol recorder)."""
    if "make_golden" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "scripts" / "make_golden.py"
        spec = importlib.util.spec_from_file_location("make_golden", path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules["make_golden"] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
    return sys.modules["make_golden"]


@pytest.fixture(scope="module")
def model():
    return load_model(GOLDEN / MANIFEST["weights"])


def test_every_readable_version_has_a_golden_file():
    assert {e["version"] for e in ENTRIES.values()} == set(READABLE_VERSIONS)
    assert sorted(ENTRIES) == sorted(e.name for e in _generator().ENTRIES)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_golden_file_decodes_as_recorded(name, model):
    want = ENTRIES[name]
    data = (GOLDEN / f"{name}.vcd").read_bytes()
    assert hashlib.sha256(data).hexdigest() == want["vcd_sha256"], "the golden file changed"
    c = Container.unpack(data)
    assert c.version == data[3] == want["version"]
    assert c.pack() == data  # the container layout reads and writes back byte for byte
    image, symbols, distinct = _generator().decode_with_symbols(data, model)
    assert distinct > 8  # the streams carry real information
    assert symbols == want["symbols_sha256"], "the decoder's symbols changed"
    expected = Image.open(GOLDEN / f"{name}.png")
    assert image.mode == expected.mode == want["mode"]
    assert list(image.size) == want["size"]
    # version 6: the profile comes back (the golden PNG holds what the decoder returned)
    assert image.info.get("icc_profile") == expected.info.get("icc_profile")
    assert bool(image.info.get("icc_profile")) == want.get("icc", False)
    diff = np.abs(np.asarray(image, np.int16) - np.asarray(expected, np.int16))
    # same symbols; the pixels may move by float noise between machines (docs/design.md)
    assert diff.max() <= 2 and (diff > 0).mean() < 0.01


def test_hash_mode_guard_in_an_older_version_is_refused(model):
    """Only version 4 writes a hash-mode guard: the same file relabelled as version 3 or
    2 (CRC made valid again) is corrupted, and decoding says so instead of trying."""
    from varicodec.codec.api import decode
    from varicodec.errors import FormatError
    from varicodec.models.guard import guard_is_hash_mode

    c = Container.unpack((GOLDEN / "v4-hash.vcd").read_bytes())
    assert guard_is_hash_mode(c.guard)
    assert not guard_is_hash_mode(Container.unpack((GOLDEN / "v3-rgb.vcd").read_bytes()).guard)
    decode(c.pack(), model)                     # as written: decodes
    for version in (3, 2):
        old = dataclasses.replace(c, version=version)
        with pytest.raises(FormatError, match=f"version {version} file holds a hash-mode guard"):
            decode(old.pack(), model)
