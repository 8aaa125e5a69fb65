"""Evaluation: runner, classical codecs, results files, plot, table, CLI (tiny and fast)."""

import json

import numpy as np
import pytest
from conftest import set_sparsity, tiny
from PIL import Image

from varicodec.cli import main
from varicodec.eval.classical import CODECS, get_codec
from varicodec.eval.results import SCHEMA, load_results, save_results
from varicodec.eval.runner import (
    evaluate_codec,
    evaluate_models,
    list_images,
    model_set,
    parse_values,
)
from varicodec.eval.table import make_tables
from varicodec.models import save_model

TINY = {"N": 16, "M": 16}


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 3, yy * 2, (xx + yy) * 2], axis=-1) % 256
    return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "images"
    d.mkdir()
    Image.fromarray(_rgb(64, 64, 0)).save(d / "a.png")
    Image.fromarray(_rgb(48, 80, 1)).save(d / "b.png")  # not a multiple of 64: codec pads
    (d / "notes.txt").write_text("not an image")
    return d


def test_parse_values():
    assert parse_values("1..3") == [1, 2, 3]
    assert parse_values(["1,2.5", "q8"]) == [1, 2.5, 8]
    assert parse_values("0.0018,0.0035") == [0.0018, 0.0035]
    with pytest.raises(ValueError):
        parse_values("3..1")
    with pytest.raises(ValueError):
        parse_values("a,b")


def test_list_images(dataset, tmp_path):
    assert [p.name for p in list_images(dataset)] == ["a.png", "b.png"]
    assert len(list_images(dataset, limit=1)) == 1
    with pytest.raises(FileNotFoundError):
        list_images(tmp_path / "missing")
    with pytest.raises(ValueError):
        list_images(tmp_path / "images" / ".." / "images", limit=0)


def test_model_set_expansion(tmp_path):
    s = model_set(["hyperprior-base@q1..3"], config=TINY)
    assert [p.setting for p in s.points] == [{"quality": 1}, {"quality": 2}, {"quality": 3}]
    assert not s.trained
    assert s.points[2].load().lmbda == pytest.approx(0.0067)
    for q, lm in ((1, 0.0018), (2, 0.0035)):
        save_model(tiny("hyperprior-base", lmbda=lm), tmp_path / f"hp-q{q}.safetensors")
    s = model_set([str(tmp_path / "hp@q1..2")])
    assert s.trained and [p.source for p in s.points] == [
        str(tmp_path / "hp-q1.safetensors"), str(tmp_path / "hp-q2.safetensors")]
    with pytest.raises(FileNotFoundError, match="hp@q3"):
        model_set([str(tmp_path / "hp@q1..3")])
    with pytest.raises(ValueError, match="fixed-rate"):
        model_set([str(tmp_path / "hp@q1..2")], qualities=[1.0])
    vr = model_set(["hyperprior-bm"], qualities=[1, 4.5], config=TINY, untrained=True)
    assert [p.lmbda for p in vr.points] == pytest.approx([0.0018, 0.0130 * (0.025 / 0.013) ** 0.5])
    with pytest.raises(FileNotFoundError):
        model_set(["no-such-thing"])


def test_registry_name_means_bundled_weights(tmp_path, monkeypatch):
    import varicodec.eval.runner as runner

    path = save_model(tiny("hyperprior-bm").eval(), tmp_path / "hyperprior-bm.safetensors")
    monkeypatch.setattr(runner, "_bundled", lambda name: path if name == "hyperprior-bm" else None)
    s = model_set(["hyperprior-bm"], qualities=[3])
    assert s.trained and s.files == [path] and s.points[0].source == str(path)
    s = model_set(["hyperprior-bm"], qualities=[3], config=TINY, untrained=True)
    assert not s.trained and s.files == []


def _point_checks(point, images=2):
    assert len(point["images"]) == images
    for row in point["images"]:
        assert row["bpp"] == pytest.approx(row["bytes"] * 8 / (row["width"] * row["height"]))
        assert row["psnr_db"] > 5 and row["encode_s"] > 0 and row["decode_s"] > 0
    assert point["bpp"] == pytest.approx(np.mean([r["bpp"] for r in point["images"]]))


def test_evaluate_variable_rate_gated(dataset, tmp_path):
    model = tiny("hyperprior-ecgbm")
    set_sparsity(model, 0.8)
    model.eval().update(force=True)
    path = save_model(model, tmp_path / "vr.safetensors")
    res = evaluate_models(model_set([str(path)], qualities=[2, 6]), list_images(dataset)[1:],
                          progress=False, warm_up=False, dataset_dir=dataset)
    assert res["schema"] == SCHEMA and res["kind"] == "model" and res["coder"] == "varicodec.codec"
    m = res["model"]
    assert m["variant"] == "ecgbm" and m["bytes_on_disk"] == path.stat().st_size
    assert m["parameters"] > 0 and m["trained"]
    assert len(res["points"]) == 2
    from varicodec.models import load_model, weights_fingerprint

    want_fingerprint = weights_fingerprint(load_model(path)).hex()
    assert want_fingerprint != weights_fingerprint(tiny("hyperprior-ecgbm")).hex()
    for p in res["points"]:
        _point_checks(p, images=1)
        assert p["encoder_flops"] > 0 and p["decoder_flops"] > 0
        assert p["bpp_estimate"] > 0 and p["fingerprint"] == want_fingerprint
        assert p["sparsity"] and 0 < p["sparsity_mean"] < 1
        assert p["ms_ssim"] is None  # images below 161 px
    assert res["points"][0]["lmbda"] < res["points"][1]["lmbda"]
    env = res["environment"]
    assert env["torch_threads"] >= 1 and env["varicodec"]
    out = save_results(res, tmp_path / "r.json")
    assert load_results(out)["points"][0]["images"][0]["image"] == "b.png"


def test_gated_flops_count_only_active_channels(dataset):
    images = list_images(dataset, limit=1)
    dense = evaluate_models(model_set(["hyperprior-base"], config=TINY, untrained=True), images,
                            progress=False, estimate=False, warm_up=False)
    gated_model = tiny("hyperprior-ecg")
    set_sparsity(gated_model, 1.0)
    gated_model.eval().update(force=True)
    s = model_set(["hyperprior-ecg"], config=TINY, untrained=True)
    s.points[0].load = lambda: gated_model
    gated = evaluate_models(s, images, progress=False, estimate=False, warm_up=False)
    d, g = dense["points"][0], gated["points"][0]
    assert g["sparsity_mean"] > 0.2
    assert g["encoder_flops"] < d["encoder_flops"]
    assert g["decoder_flops"] < d["decoder_flops"]


def test_evaluate_fixed_set(dataset):
    res = evaluate_models(model_set(["hyperprior-base@q1..2"], config=TINY),
                          list_images(dataset, limit=1), progress=False, warm_up=False,
                          flops=False, estimate=False)
    assert res["model"]["models"] == 2 and res["model"]["trained"] is False
    p1, p2 = res["points"]
    assert (p1["lmbda"], p2["lmbda"]) == (0.0018, 0.0035)
    assert p1["quality"] == 1 and p2["quality"] == 2
    # same seed, same tensors (λ is not a tensor): one fingerprint, that of the weights
    assert p1["fingerprint"] == p2["fingerprint"]
    assert int(p1["fingerprint"], 16) and len(p1["fingerprint"]) == 16
    assert p1["bpp_estimate"] is None and p1["encoder_flops"] is None


def test_classical_codecs_round_trip():
    rgb = _rgb(64, 64, 2)
    for name, codec in CODECS.items():
        if codec.check():
            continue
        lo, hi = codec.sweep[2], codec.sweep[-2]
        a, b = codec.encode(rgb, lo), codec.encode(rgb, hi)
        assert codec.decode(a).shape == rgb.shape, name
        assert len(a) < len(b), name
    with pytest.raises(ValueError, match="unknown codec"):
        get_codec("bpg")


def test_evaluate_codec(dataset):
    res = evaluate_codec(get_codec("jpeg"), list_images(dataset), [10, 80], progress=False)
    assert res["kind"] == "codec" and res["codec"]["setting"] == "quality"
    p10, p80 = res["points"]
    _point_checks(p10)
    assert p10["setting"] == {"quality": 10}
    assert p10["bpp"] < p80["bpp"] and p10["psnr_db"] < p80["psnr_db"]
    assert p10["encoder_flops"] is None


def _fake(label, arch, variant, rates, psnrs, flops=None, sparsity=None, nbytes=None, n=1):
    points = []
    for i, (r, d) in enumerate(zip(rates, psnrs)):
        points.append({
            "setting": {"quality": i + 1}, "lmbda": [0.0018, 0.0035, 0.0067, 0.013][i],
            "quality": i + 1, "bpp": r, "psnr_db": d, "ms_ssim": 0.9 + 0.02 * i,
            "ms_ssim_db": 10 + i, "encoder_flops": flops and flops[i],
            "decoder_flops": flops and flops[i], "sparsity": sparsity or {},
            "sparsity_mean": (sum(sparsity.values()) / len(sparsity)) if sparsity else None,
        })
    return {"schema": SCHEMA, "label": label, "kind": "model",
            "model": {"arch": arch, "variant": variant, "bytes_on_disk": nbytes, "models": n,
                      "trained": True},
            "points": points}


def test_table_and_plot(tmp_path):
    rates, psnrs = [0.15, 0.25, 0.4, 0.6], [28.0, 30.0, 32.0, 34.0]
    base = _fake("base", "hyperprior", "base", rates, psnrs, flops=[4e9] * 4,
                 nbytes=8000, n=8)
    ecg = _fake("ecg", "hyperprior", "ecg", rates, [p * 0.99 for p in psnrs], flops=[2e9] * 4,
                sparsity={"net.g_a.2": 0.5, "net.g_s.0": 0.25})
    vr = _fake("vr", "hyperprior", "ecgbm", [0.9 * r for r in rates], psnrs,
               sparsity={"net.g_a.2": 0.4, "net.g_s.0": 0.6}, nbytes=1000)
    text = make_tables([base, ecg, vr])
    row = "| 1.00 | 0.0018 | 0.150 | 0.150 | 28.00 | 27.72 | 1.00 | 2.00 | 2.00 | 2.00 | 0.375 |"
    assert row + " n/a | n/a |" in text
    assert "| hyperprior | vr | base (8 models) | -10.00 % |" in text
    assert "| 87.5 % |" in text  # 1 − 1000/8000
    paths = []
    for r in (base, ecg, vr):
        paths.append(save_results(r, tmp_path / f"{r['label']}.json"))
    fig = tmp_path / "fig.png"
    assert main(["plot", *map(str, paths), "-o", str(fig), "--reference", "hyperprior"]) == 0
    assert fig.stat().st_size > 10_000
    assert main(["table", *map(str, paths), "--anchor", "base", "--points", "--matrix", "-o",
                 str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert "BD-rate vs base" in md and "### vr" in md
    assert "| vr | -10.0 |" in md  # matrix row: vr against base


def test_cli_eval(dataset, tmp_path, capsys):
    out = tmp_path / "jpeg.json"
    assert main(["eval", "--codec", "jpeg", str(dataset), "--sweep", "20,60", "-o", str(out)]) == 0
    assert [p["setting"]["quality"] for p in json.loads(out.read_text())["points"]] == [20, 60]
    assert main(["eval", "--codec", "jpeg", str(dataset), "-o", str(out)]) == 2  # exists
    out2 = tmp_path / "bm.json"
    assert main(["eval", "--model", "hyperprior-bm", str(dataset), "--untrained", "--N", "16",
                 "--M", "16",
                 "--quality", "3", "--limit", "1", "--no-flops", "-o", str(out2)]) == 0
    res = load_results(out2)
    assert res["model"]["trained"] is False and res["points"][0]["encoder_flops"] is None
    assert main(["eval", "--model", "hyperprior-bm", str(tmp_path / "nope"),
                 "-o", str(tmp_path / "x.json")]) == 2
    assert "no such dataset folder" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["table", str(tmp_path / "bad.json")]) == 2


def test_cli_eval_untrained_needs_the_flag(dataset, tmp_path, capsys):
    """A registry name without trained weights is not quietly evaluated at random."""
    out = tmp_path / "base.json"
    for spec in ("hyperprior-base", "mean-base@q1..2"):
        assert main(["eval", "--model", spec, str(dataset), "--N", "16", "--M", "16",
                     "--limit", "1", "--no-flops", "-o", str(out)]) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith("varicodec: warning:") and "no trained weights" in err[0]
        assert spec in err[0] and "--untrained" in err[-1] and len(err) == 2
        assert not out.exists()


def test_continuity_counts_reversals_and_gaps():
    from varicodec.eval.table import continuity, make_tables

    def result(bpps, psnrs):
        return {"label": "vr", "kind": "model",
                "model": {"arch": "hyperprior", "variant": "bm", "variable_rate": True},
                "points": [{"lmbda": 0.001 * (i + 1), "bpp": b, "psnr_db": p}
                           for i, (b, p) in enumerate(zip(bpps, psnrs))]}

    smooth = continuity(result([0.1, 0.2, 0.3, 0.7], [25, 26, 27, 28]))
    assert smooth["rate_reversals"] == 0 and smooth["psnr_reversals"] == 0
    assert smooth["largest_step_bpp"] == pytest.approx(0.4)
    assert smooth["largest_step_share"] == pytest.approx(0.4 / 0.6)
    bumpy = continuity(result([0.1, 0.3, 0.2, 0.4], [25, 27, 26, 28]))
    assert bumpy["rate_reversals"] == 1 and bumpy["psnr_reversals"] == 1
    assert continuity(result([0.1, 0.2], [25, 26])) is None
    assert "| vr | 4 | 0.100–0.400 | 1 | 1 |" in make_tables([result([0.1, 0.3, 0.2, 0.4],
                                                                      [25, 27, 26, 28])])


def test_paper_table_puts_every_architecture_in_one_table():
    """Section "The paper's table": one table, rows of each architecture that has a base
    and an ecg set, values per quality column (matched by λ), the poster's rows beside."""
    from varicodec.eval.table import POSTER_TABLE

    rates, psnrs = [0.15, 0.25, 0.4, 0.6], [28.0, 30.0, 32.0, 34.0]
    results = []
    for arch, f in (("hyperprior", 2e9), ("joint", 3e9)):
        results.append(_fake(f"{arch}-base", arch, "base", rates, psnrs, flops=[6e9] * 4))
        results.append(_fake(f"{arch}-ecg", arch, "ecg", rates, [p * 0.99 for p in psnrs],
                             flops=[f] * 4, sparsity={"net.g_a.2": 0.5, "net.g_s.0": 0.25}))
    results.append(_fake("mean-base", "mean", "base", rates, psnrs, flops=[6e9] * 4))
    text = make_tables(results)
    section = text.split("## The paper's table")[1].split("\n## ")[0]
    assert section.count("\n| model | figure | q1 |") == 1  # one table
    # ecg 1 % below base at q1..q4, q5..q8 absent; FLOPs 6/2 = 3× and 6/3 = 2×
    assert "| hyperprior | PSNR drop % (hyperprior-ecg) | 1.00 | 1.00 | 1.00 | 1.00 | n/a |" \
        in section
    assert "| hyperprior | FLOP reduction × (hyperprior-ecg) | 3.00 | 3.00 | 3.00 | 3.00 |" \
        in section
    assert "| joint | FLOP reduction × (joint-ecg) | 2.00 | 2.00 |" in section
    assert "| joint | sparsity (joint-ecg) | 0.375 |" in section
    poster = POSTER_TABLE["joint"]["flop_reduction"]
    assert "| joint | FLOP reduction × (poster) | " + " | ".join(f"{v:.2f}" for v in poster) \
        in section
    assert "| mean |" not in section  # no ecg set, no row
    assert section.index("| hyperprior |") < section.index("| joint |")


def test_table_sets_a_universal_ecgbm_against_its_bm_twin():
    """ECG on the universal model: an ecgbm result against the bm result of its
    architecture, λ by λ, without any fixed-rate set; other architectures' bm not used."""
    rates, psnrs = [0.15, 0.25, 0.4, 0.6], [28.0, 30.0, 32.0, 34.0]
    bm = _fake("mean-bm", "mean", "bm", rates, psnrs, flops=[6e9] * 4)
    ecgbm = _fake("mean-ecgbm", "mean", "ecgbm", [1.1 * r for r in rates],
                  [p * 0.98 for p in psnrs], flops=[3e9] * 4,
                  sparsity={"net.g_a.2": 0.5, "net.g_s.0": 0.5})
    other = _fake("joint-bm", "joint", "bm", rates, psnrs, flops=[1e9] * 4)
    text = make_tables([bm, ecgbm, other])
    section = text.split("## Against the dense models, λ by λ")[1].split("\n## ")[0]
    assert section.count("\n### ") == 1 and "### mean: mean-ecgbm against mean-bm" in section
    assert "| 1.00 | 0.0018 | 0.150 | 0.165 | 28.00 | 27.44 | 2.00 | 2.00 | 2.00 | 2.00 | " \
        "0.500 |" in section
    assert "BD-rate against mean-bm: +" in section


def _part(path, qualities, name="hyperprior-ecg", **kw):
    """A fixed-rate set's evaluation at some qualities, written to ``path``."""
    lm = [0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483, 0.0932, 0.18]
    res = _fake("hyperprior ecg", "hyperprior", name.split("-")[-1], [0.1] * 4, [30.0] * 4)
    res["points"] = [{**res["points"][0], "lmbda": lm[q - 1], "quality": q,
                      "bpp": 0.1 * q, "psnr_db": 26.0 + q} for q in qualities]
    res["model"].update(name=name, variable_rate=False, models=len(qualities),
                        files=[f"q{q}.safetensors" for q in qualities],
                        bytes_on_disk=1000 * len(qualities))
    res.update({"dataset": {"files": ["a.png", "b.png"]}, "options": {"flops": True}, **kw})
    path.write_text(json.dumps(res))
    return path


def test_merge_joins_the_parts_of_a_fixed_rate_set(tmp_path, capsys):
    a, b = _part(tmp_path / "a.json", [1, 2, 3, 4, 5]), _part(tmp_path / "b.json", [6, 7, 8])
    out = tmp_path / "all.json"
    assert main(["merge", str(b), str(a), "-o", str(out), "--label", "hyperprior ecg q1-8"]) == 0
    merged = load_results(out)
    assert [p["quality"] for p in merged["points"]] == list(range(1, 9))
    assert merged["model"]["models"] == 8 and merged["model"]["bytes_on_disk"] == 8000
    assert merged["model"]["files"] == [f"q{q}.safetensors" for q in (6, 7, 8, 1, 2, 3, 4, 5)]
    assert merged["label"] == "hyperprior ecg q1-8"
    assert [m["file"] for m in merged["merged_from"]] == [str(b), str(a)]
    # a curve for the table: the storage row counts the eight models
    universal = load_results(_part(tmp_path / "v.json", [1, 4, 8]))
    universal["model"] = {"arch": "hyperprior", "variant": "ecgbm", "bytes_on_disk": 900}
    assert "hyperprior ecg q1-8 (8 models) |" in make_tables([merged, universal])
    # refusals, each one line with a non-zero exit, no output written
    bad = tmp_path / "bad.json"
    for args, message in [
        ([a, _part(tmp_path / "c.json", [5, 6])], "λ 0.025 comes in more than one part"),
        ([a, _part(tmp_path / "d.json", [6], name="hyperprior-base")], "model hyperprior-base"),
        ([a, _part(tmp_path / "e.json", [6], dataset={"files": ["a.png"]})], "other images"),
        ([a], "at least two"),
    ]:
        assert main(["merge", *map(str, args), "-o", str(bad)]) != 0
        assert message in capsys.readouterr().err and not bad.exists()
    assert main(["merge", str(a), str(b), "-o", str(out)]) != 0
    assert "exists" in capsys.readouterr().err
    assert main(["merge", str(a), str(b), "-o", str(a), "--force"]) != 0
    assert "refusing to overwrite the input" in capsys.readouterr().err


def _model_part(path, qualities, fingerprint="ab12"):
    """A variable-rate model's evaluation at some qualities, written to ``path``."""
    path = _part(path, qualities, name="hyperprior-ecgbm")
    res = json.loads(path.read_text())
    res["model"].update(variable_rate=True, models=1, files=["m.safetensors"],
                        bytes_on_disk=900)
    for p in res["points"]:
        p["fingerprint"] = fingerprint
    path.write_text(json.dumps(res))
    return path


def test_merge_joins_a_variable_rate_models_parts_if_the_weights_are_one(tmp_path, capsys):
    a = _model_part(tmp_path / "a.json", [1, 3, 5, 8])
    b = _model_part(tmp_path / "b.json", [2, 4, 6, 7])
    out = tmp_path / "all.json"
    assert main(["merge", str(a), str(b), "-o", str(out)]) == 0
    merged = load_results(out)
    assert [p["quality"] for p in merged["points"]] == list(range(1, 9))
    # one model, not two: the storage a table reports is the one file's
    assert merged["model"]["models"] == 1 and merged["model"]["bytes_on_disk"] == 900
    assert merged["model"]["files"] == ["m.safetensors"]
    bad = tmp_path / "bad.json"
    for args, message in [
        ([a, _model_part(tmp_path / "c.json", [2], fingerprint="cd34")], "other weights"),
        ([a, _part(tmp_path / "d.json", [2], name="hyperprior-ecgbm")],
         "a fixed-rate set, not a variable-rate model"),
        ([_part(tmp_path / "e.json", [2], name="hyperprior-ecgbm"), a],
         "a variable-rate model, not a fixed-rate set"),
    ]:
        assert main(["merge", *map(str, args), "-o", str(bad)]) != 0
        assert message in capsys.readouterr().err and not bad.exists()
