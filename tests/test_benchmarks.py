"""Benchmarks: without their data they measure nothing (exit non-zero and say so); grid_speed
times a grid against CompressAI's own network."""

import json

import pytest
import torch
from conftest import load_benchmark


@pytest.mark.parametrize("name", ["rate_control", "grid_speed", "sparse_speed", "refine"])
def test_missing_data_is_not_a_success(name, tmp_path, capsys):
    bench = load_benchmark(name)
    assert bench.main(["--data", str(tmp_path / "nothing")]) == 1
    err = capsys.readouterr().err
    assert "nothing measured" in err and str(tmp_path / "nothing") in err


@pytest.mark.parametrize("arch", ["hyperprior", "mean"])
def test_grid_speed_times_a_grid_against_compressai(arch, tmp_path, capsys):
    """Every coder runs on the same images; CompressAI's own network of the dense weights
    writes the dense model's y stream; a missing file is a one-line error."""
    from conftest import set_sparsity, tiny, write_images

    from varicodec.models import load_model, save_model

    prefix = "hyperprior-paper" if arch == "hyperprior" else arch
    folder = tmp_path / "w"
    folder.mkdir()
    bench = load_benchmark("grid_speed")
    args = ["--dir", str(folder), "--arch", prefix, "--quality", "1", "--threads", "1",
            "--reps", "1", "--limit", "1", "--data",
            str(write_images(tmp_path / "img", 1, (64, 64), 8))]
    assert bench.main(args) == 1
    assert f"{prefix}-base-q1" in capsys.readouterr().err
    save_model(tiny(f"{arch}-base").eval(), folder / f"{prefix}-base-q1.safetensors")
    ecg = tiny(f"{arch}-ecg").eval()
    set_sparsity(ecg)
    save_model(ecg, folder / f"{prefix}-ecg-q1.safetensors")
    out = tmp_path / "speed.json"
    assert bench.main([*args, "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert set(row["decode_s"]) == {"compressai", "base", "ecg"}
    assert row["ecg_decode_speedup_vs_compressai"] > 0 and 0 < row["sparsity"]["ecg"] < 1
    base = load_model(folder / f"{prefix}-base-q1.safetensors")
    net = base.compressai_network()
    assert not any(type(m).__name__ == "InplaceGDN" for m in net.modules())
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        ours, theirs = base.compress(x), net.compress(x)
    assert ours["strings"][0] == theirs["strings"][0]  # the same dense network


def test_portability_takes_a_fixed_rate_model(tmp_path, capsys):
    """A fixed-rate model codes at its own λ: the benchmark writes one file per image,
    named by the model's quality, and says that --qualities was ignored."""
    from conftest import tiny, write_images

    from varicodec.models import save_model

    model = tiny("mean-base", lmbda=0.0067).eval()
    model.update(force=True)
    path = tmp_path / "mean-base.safetensors"
    save_model(model, path)
    bench = load_benchmark("portability")
    out = tmp_path / "rate.json"
    bench.main(["rate", "--model", str(path), "--images",
                str(write_images(tmp_path / "img", 2, (64, 64), 8)), "--qualities", "1", "4",
                "-o", str(out)])
    assert "fixed-rate (quality 3)" in capsys.readouterr().err
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 2 and {r["quality"] for r in rows} == {3.0}


def test_gates_open_finds_the_layer_that_matters(tmp_path, capsys):
    """Opening every gate of a model with gates set closed changes its coding; opening the
    gates of a layer whose channels are all open already changes nothing; a dense model
    and a missing folder are one-line refusals."""
    from conftest import set_sparsity, tiny, write_images

    from varicodec.models import save_model

    model = tiny("hyperprior-ecg").eval()
    set_sparsity(model)
    model.update(force=True)
    path = tmp_path / "ecg.safetensors"
    save_model(model, path)
    bench = load_benchmark("gates_open")
    images = write_images(tmp_path / "img", 2, (64, 64), 8)
    out = tmp_path / "open.json"
    assert bench.main([str(path), "--images", str(images), "--json", str(out)]) == 0
    rows = {r["opened"]: r for r in json.loads(out.read_text())["rows"]}
    trained = rows["none (as trained)"]
    assert (rows["all"]["bpp"], rows["all"]["psnr_db"]) != (trained["bpp"], trained["psnr_db"])
    for name, r in rows.items():
        if r["sparsity"] == 0.0:  # nothing was closed there: opening it is a no-op
            assert (r["bpp"], r["psnr_db"]) == (trained["bpp"], trained["psnr_db"]), name
    assert "| gates opened |" in capsys.readouterr().out
    dense = tmp_path / "base.safetensors"
    save_model(tiny("hyperprior-base").eval(), dense)
    assert bench.main([str(dense), "--images", str(images)]) == 2
    assert "not a gated model" in capsys.readouterr().err
    assert bench.main([str(path), "--images", str(tmp_path / "none")]) == 2
    assert "no PNG images" in capsys.readouterr().err


def test_refine_measures_real_files_and_compares_eval_results(tmp_path, capsys):
    from PIL import Image
    from tiny_models import texture

    from varicodec.imageio import to_uint8

    bench = load_benchmark("refine")
    (tmp_path / "img").mkdir()
    Image.fromarray(to_uint8(texture(64, 64, seed=2))).save(tmp_path / "img" / "a.png")
    out = tmp_path / "r.json"
    assert bench.main(["--data", str(tmp_path / "img"), "--quality", "3", "--steps", "20",
                       "--json", str(out)]) == 0
    (s,) = json.loads(out.read_text())["summary"]
    assert s["steps"] == 20 and s["images"] == 1 and s["cost_change_pct"] < 0
    assert s["encode_cpu_ratio"] > 1 and 0 < s["decoder_sparsity_refined"] < 1
    assert "| 3 | 20 | 1 |" in capsys.readouterr().out

    def result(label, bpp, psnr, fp="f"):
        rows = [{"image": "a.png", "bpp": bpp, "psnr_db": psnr, "encode_s": 1.0 if label == "p"
                 else 9.0, "decode_s": 0.5}]
        return {"label": label, "points": [{"lmbda": 0.013, "quality": 4.0, "fingerprint": fp,
                                            "images": rows}]}

    (c,) = bench.compare(result("p", 0.5, 30.0), result("r", 0.45, 30.5))["summary"]
    assert c["bpp_change_pct"] == pytest.approx(-10.0) and c["psnr_change_db"] == 0.5
    assert c["images_improved"] == 1 and c["encode_time_ratio"] == 9.0
    assert "decode_time_ratio" in s
    with pytest.raises(ValueError, match="other weights"):
        bench.compare(result("p", 0.5, 30.0), result("r", 0.45, 30.5, fp="g"))


def test_memory_measures_the_refining_encoder_in_its_own_process(monkeypatch):
    """``memory.py --refine`` runs a third child per picture, ``encode --refine``, and
    reports its peak RSS and the file it wrote."""
    bench = load_benchmark("memory")
    monkeypatch.setitem(bench.SHAPES, 1, (64, 48))
    base, row = bench.memory([1], [], threads=None, refine=1)
    assert row["refine_steps"] == 1 and row["size"] == "64x48"
    assert row["refine_encode_rss_mib"] > base["rss_mib"] and row["refine_bpp"] > 0
    assert row["refine_encode_s"] > 0 and row["encode_rss_mib"] > 0


def test_guard_profile_profiles_both_decodes(tmp_path, capsys):
    """guard_profile decodes a guarded and an unguarded file of the same image and prints
    a profile of each; a missing image is a one-line exit that measures nothing."""
    from conftest import tiny, write_images

    from varicodec.models import save_model

    bench = load_benchmark("guard_profile")
    weights = tmp_path / "m.safetensors"
    save_model(tiny("joint-ecgbm").eval(), weights)
    with pytest.raises(SystemExit, match="nothing measured"):
        bench.main(["--model", str(weights), "--image", str(tmp_path / "none.png")])
    image = next(write_images(tmp_path / "img", 1, (64, 64), 8).iterdir())
    bench.main(["--model", str(weights), "--image", str(image), "--threads", "1",
                "--repeats", "1", "--passes", "1", "--top", "5"])
    out = capsys.readouterr().out
    assert out.count(" s per decode") == 2 and "guard:" in out and "none:" in out
    assert out.count("ncalls") == 2
    bench.main(["--model", str(weights), "--image", str(image), "--threads", "1",
                "--repeats", "1", "--passes", "1", "--inside"])
    out = capsys.readouterr().out
    assert "ncalls" not in out and out.count(" s per decode; guard calls ") == 2
    assert "replayed in a loop" in out and "convolution before each call" in out
    assert "one guarded decode, 0 calls" not in out


def test_allocator_compares_settings_in_their_own_processes(tmp_path, capsys):
    """allocator.py runs each malloc setting in a fresh worker, reports medians and ratios
    against the system's default, and checks the files are the same; missing images are a
    one-line exit that measures nothing."""
    import platform
    import sys

    from conftest import tiny, write_images

    from varicodec.models import save_model

    bench = load_benchmark("allocator")
    with pytest.raises(SystemExit, match="nothing measured"):
        bench.main(["--images", str(tmp_path / "none.png")])
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("the settings are glibc's")
    weights = tmp_path / "m.safetensors"
    save_model(tiny("hyperprior-bm").eval(), weights)
    image = next(write_images(tmp_path / "img", 1, (64, 64), 8).iterdir())
    out = tmp_path / "alloc.json"
    bench.main(["--images", str(image), "--model", str(weights), "--settings", "system",
                "shipped", "--rounds", "1", "--repeats", "1", "--threads", "1",
                "--json", str(out)])
    got = json.loads(out.read_text())
    assert set(got["summary"]) == {"system", "shipped"}
    shipped = got["summary"]["shipped"]
    assert shipped["took"] and shipped["encode_s"] > 0 and shipped["peak_rss_mib"] > 0
    assert shipped["encode_speedup_vs_system"] > 0 and len(got["runs"]["system"]) == 1
    assert got["summary"]["system"]["bytes"] == shipped["bytes"] > 0
    assert "enc×/system" in capsys.readouterr().out


def test_train_loop_speed_interleaves_settings(tmp_path, capsys):
    """--rounds: every setting timed in turns, per-round rates kept, ratios against the first."""
    import yaml
    from conftest import BENCHMARKS, write_images

    recipe = yaml.safe_load((BENCHMARKS.parent / "configs" / "tiny-test.yaml").read_text())
    recipe["train_dir"] = str(write_images(tmp_path / "train", 3, (96, 80), 8))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(recipe))
    bench = load_benchmark("train_loop_speed")
    out = tmp_path / "speed.json"
    args = ["--config", str(config), "--settings", "old,memory", "--warmup", "1",
            "--seconds", "0.4", "--threads", "1", "--out", str(out)]
    assert bench.main([*args, "--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert bench.main([*args, "--rounds", "2"]) == 0
    data = json.loads(out.read_text())
    assert data["rounds"] == 2 and "--rounds 2" in data["command"]
    for name, r in data["results"].items():
        assert len(r["steps_per_s_per_round"]) == 2 and r["steps"] > 0, name
        assert r["steps_per_s"] == pytest.approx(r["steps"] / r["seconds"])
    assert data["results"]["old"]["crops_per_s_vs_old"] == 1.0
    assert data["results"]["memory"]["crops_per_s_vs_old"] == pytest.approx(
        data["results"]["memory"]["crops_per_s"] / data["results"]["old"]["crops_per_s"])
    assert bench.main(args) == 0  # one after the other
    data = json.loads(out.read_text())
    assert data["rounds"] == 1 and all(r["steps"] > 0 for r in data["results"].values())
