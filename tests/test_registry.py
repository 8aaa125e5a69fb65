"""The architecture registry is the one source of truth (issue 16).

``cheng2020-anchor`` (CompressAI's ``Cheng2020Anchor``: residual blocks, sub-pixel
convolutions, M = N) is registered by one entry in ``models/registry.py`` and nothing
else; these tests show it gets all four variants, gates, the modulator, a format id,
a reference curve and real coding through the registry alone.
"""

import numpy as np
import pytest
import torch
from tiny_models import coded_symbols, distinct, texture, tiny_model

from varicodec.codec import decode_image, encode
from varicodec.codec.format import MODEL_IDS, Container, is_gated, is_variable_rate
from varicodec.eval.reference import reference_results
from varicodec.models.registry import (
    ARCHITECTURES,
    VARIANTS,
    Architecture,
    architecture,
    list_models,
    parse_name,
    register,
)
from varicodec.quality import QUALITY_LMBDAS

CHENG = [f"cheng2020-anchor-{v}" for v in VARIANTS]


def test_every_name_comes_from_an_entry():
    assert list_models() == [f"{a}-{v}" for a in ARCHITECTURES for v in VARIANTS]
    assert set(CHENG) <= set(list_models())
    for name in list_models():
        arch, variant = parse_name(name)
        assert architecture(name).name == arch
        assert (is_gated(name), is_variable_rate(name)) == VARIANTS[variant]
    # model ids: one per name, unique, the legacy twelve unchanged (test_format pins them)
    assert sorted(MODEL_IDS) == sorted(list_models())
    assert len(set(MODEL_IDS.values())) == len(MODEL_IDS)


def test_format_doc_lists_the_registry_ids():
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md").read_text()
    table = next(b for b in doc.split("Model ids", 1)[1].split("\n\n") if b.startswith("|"))
    pairs = re.findall(r"\| (\d+) \| ([a-z0-9-]+) ", table)
    assert {name: int(i) for i, name in pairs} == MODEL_IDS


def test_every_architecture_downsamples_by_64():
    from varicodec import create_model

    for a in ARCHITECTURES:
        assert create_model(f"{a}-base", N=8, M=8).downsampling_factor == 64  # z: ⌈H/64⌉


def test_widths_and_curves_are_compressais():
    from compressai.zoo.image import cfgs

    for a in ARCHITECTURES.values():
        theirs = cfgs[a.compressai_name]
        assert len(a.widths) == len(theirs) == len(a.reference) <= len(QUALITY_LMBDAS)
        for q, (n, m) in enumerate(a.widths, start=1):
            assert theirs[q][0] == n and theirs[q][-1] == m  # cheng's cfg is (N,): M = N
        bpp = [p["bpp"] for p in reference_results(a.name)["points"]]
        assert bpp == sorted(bpp) and len(bpp) == len(a.widths)


def test_register_refuses_reused_ids_and_names():
    entry = ARCHITECTURES["mean"]
    with pytest.raises(ValueError, match="already registered"):
        register(entry)
    clash = Architecture("other", entry.compressai_name, entry.build, entry.widths, (17, 18, 19, 4))
    with pytest.raises(ValueError, match="format ids"):
        register(clash)
    assert "other" not in ARCHITECTURES


def test_reference_choices_follow_the_registry(capsys):
    from varicodec.cli import main

    try:
        rc = main(["table", "x.json", "--reference", "nonesuch"])
    except SystemExit as e:
        rc = e.code
    assert rc == 2 and "cheng2020-anchor" in capsys.readouterr().err
    assert reference_results("cheng2020-anchor")["label"] == \
        "CompressAI cheng2020-anchor (published)"


def test_cheng_needs_one_width():
    from varicodec import create_model

    with pytest.raises(ValueError, match="M = N"):
        create_model("cheng2020-anchor-base", N=16, M=32)


@pytest.mark.parametrize("name", CHENG)
def test_cheng_variants_get_the_plug_ins(name):
    from varicodec import create_model

    model = create_model(name, N=16, M=16)
    gated, variable_rate = VARIANTS[parse_name(name)[1]]
    assert (model.gated, model.variable_rate) == (gated, variable_rate)
    layers = [n.removeprefix("net.") for n, _ in model.gates()]
    if not gated:
        assert not layers
        return
    # gates attach to the residual blocks' and sub-pixel convolutions of every transform ...
    for part in ("g_a", "h_a", "h_s", "g_s"):
        assert any(n.startswith(part + ".") for n in layers), part
    assert "g_a.1.conv1" in layers and "g_s.7.0" in layers  # residual block; subpel conv
    # ... but not to the first RGB convolutions nor the position-by-position networks
    assert not any(n.startswith(("g_a.0.conv1", "g_a.0.skip")) for n in layers)
    assert not any(n.startswith(("context_prediction", "entropy_parameters")) for n in layers)


@pytest.mark.parametrize("name", CHENG)
def test_cheng_codes_through_the_file_format(name, monkeypatch):
    """encode → .vcd bytes (the entry's model id) → decode: the decoder's latent symbols
    are the encoder's, in order (more than 8 distinct ones in each stream)."""
    model = tiny_model(name, alpha=0.8 if VARIANTS[parse_name(name)[1]][0] else None)
    image = (texture().squeeze(0).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    q = 4.0 if model.variable_rate else None
    with coded_symbols() as enc:
        data = encode(image, model, quality=q)
    assert min(distinct(enc).values()) > 8, distinct(enc)
    assert Container.unpack(data).model_name == name
    assert data[5] == MODEL_IDS[name]
    decoded_symbols = []
    gc = type(model.net.gaussian_conditional)
    original = gc.dequantize  # a static method

    def spy(inputs, means=None, dtype=torch.float):
        decoded_symbols.append(inputs.detach().reshape(-1).to(torch.int32))
        return original(inputs, means, dtype)

    monkeypatch.setattr(gc, "dequantize", staticmethod(spy))
    out, _ = decode_image(data, model)
    monkeypatch.undo()
    assert torch.equal(torch.cat(decoded_symbols), torch.cat(enc["y"]).to(torch.int32))
    assert out.size == (image.shape[1], image.shape[0]) and out.mode == "RGB"
