"""benchmarks/gpu_portability.py end to end on the CPU (``device`` falls back to it): the
procedure a GPU window runs stays runnable, and a clean run reports no error."""

import importlib.util
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tiny_models import tiny_model

from varicodec.models import save_model

ROOT = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_portability",
                                                  ROOT / "benchmarks/gpu_portability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_prepare_device_collect_on_the_cpu(tmp_path, monkeypatch):
    gp = _module()
    val = tmp_path / "val"
    val.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
            val / f"v{i}.png")
    work = tmp_path / "work"
    save_model(tiny_model("hyperprior-ecgbm"), tmp_path / "hyper.safetensors", half=False)
    monkeypatch.setattr(gp, "VAL", val)
    monkeypatch.setattr(gp, "WORK", work)
    monkeypatch.setattr(gp, "MODELS", {**gp.MODELS,
                                       "hyperprior-ecgbm-128": tmp_path / "hyper.safetensors",
                                       "mean-ecgbm-tiny": work / "mean-ecgbm-tiny.safetensors"})
    assert gp.main(["prepare"]) == 0
    assert len(list((work / "cpu").glob("*.vcd"))) == 3 * 2 * len(gp.QUALITIES)
    out = tmp_path / "out"
    assert gp.main(["device", "--out", str(out)]) == 0
    assert gp.main(["collect", str(out), "--json", str(tmp_path / "gpu.json")]) == 0
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert len(result["summary"]) == 6
    for v in result["summary"].values():
        assert v["decodes"] == 2 * len(gp.QUALITIES) and v["errors"] == 0
        assert v["max_pixel_diff"] == 0
