"""docs/weights-policy.md: which weights git keeps, and the manifests of the rest."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
#: where committed weights may live: bundled defaults, training-line inits, test fixtures
ALLOWED = ("src/varicodec/weights/", "checkpoints/gpu/", "checkpoints/hyperprior-bm-cpu.",
           "tests/golden/")


def test_git_keeps_only_the_weights_the_policy_allows():
    try:
        out = subprocess.run(["git", "ls-files", "*.safetensors"], cwd=ROOT, text=True,
                             capture_output=True, check=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("not a git checkout")
    stray = [f for f in out.splitlines() if not f.startswith(ALLOWED)]
    assert not stray, f"research weights belong in a manifest, not in git: {stray}"


@pytest.mark.parametrize("manifest", sorted(ROOT.glob("checkpoints/*/MANIFEST.json")),
                         ids=lambda p: p.parent.name)
def test_manifests_describe_every_file(manifest):
    entries = json.loads(manifest.read_text())["weights"]
    assert entries
    for e in entries:
        assert len(e["sha256"]) == 64 and e["bytes"] > 0
        assert e["card"] and (manifest.parent / e["card"]).is_file()  # cards stay in git
        assert e["regenerate"] or e["restore"]
        local = manifest.parent / e["file"]
        if local.exists():  # the machine that has them: same size (--verify checks sha256)
            assert local.stat().st_size == e["bytes"]


@pytest.fixture
def manifest_folder():
    """A scratch folder under runs/ (git-ignored): the script writes paths relative to
    the repository, so the folder must be inside it."""
    folder = ROOT / "runs" / f"manifest-test-{os.getpid()}"
    folder.mkdir(parents=True)
    yield folder
    shutil.rmtree(folder)


def run_manifest(folder, *extra) -> subprocess.CompletedProcess:
    """``python scripts/weights_manifest.py FOLDER EXTRA…``, its output captured."""
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "weights_manifest.py"),
                           str(folder), *extra], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_manifest_keeps_a_hand_written_regenerate_command(manifest_folder):
    """scripts/weights_manifest.py derives "train the last recipe, export" from the card;
    a command already in the manifest (written by hand for an --init chain) survives a
    re-run, and --rederive replaces it."""
    folder = manifest_folder
    (folder / "m.safetensors").write_bytes(b"weights")
    (folder / "m.safetensors.json").write_text(json.dumps(
        {"name": "joint-bm", "total_steps": 3, "recipe": {"name": "tiny-test"}}))
    hand = "varicodec train --config a.yaml && varicodec train --config b.yaml --init x"
    (folder / "MANIFEST.json").write_text(json.dumps({"weights": [{
        "file": "m.safetensors", "bytes": 1, "sha256": "0" * 64,
        "card": "m.safetensors.json", "regenerate": hand, "restore": None,
        "note": "written by hand"}]}))

    def run(*extra):
        r = run_manifest(folder, *extra)
        assert r.returncode == 0, r.stderr
        entry, = json.loads((folder / "MANIFEST.json").read_text())["weights"]
        return entry, r.stderr

    entry, err = run()
    assert entry["regenerate"] == hand and entry["bytes"] == 7
    assert entry["note"] == "written by hand"
    assert "m.safetensors changed" in err  # its bytes differ from the old entry's
    entry, err = run("--rederive", "m.safetensors")
    assert entry["regenerate"].startswith("varicodec train --config configs/tiny-test.yaml")
    assert "changed" not in err


def test_a_reexport_of_the_same_weights_keeps_its_entry(manifest_folder):
    """An export embeds its card (with the exporting commit), so the same weights exported
    again get another file hash; the manifest keeps the entry results name (its sha256)
    and --verify accepts the file by its weights fingerprint, while other weights fail."""
    from conftest import tiny

    from varicodec.models import save_model, weights_fingerprint
    from varicodec.util import file_sha256

    model = tiny("hyperprior-base")
    m = manifest_folder / "m.safetensors"
    save_model(model, m, card={"note": "first export"})
    first = {"file": m.name, "bytes": m.stat().st_size, "sha256": file_sha256(m),
             "fingerprint": weights_fingerprint(model).hex(), "card": "m.safetensors.json",
             "regenerate": "varicodec train --config x.yaml", "restore": None}
    (manifest_folder / "MANIFEST.json").write_text(json.dumps({"weights": [first]}))
    save_model(model, m, card={"note": "exported again, by another commit"})
    assert file_sha256(m) != first["sha256"]

    r = run_manifest(manifest_folder, "--verify")
    assert r.returncode == 0 and "same weights" in r.stdout, r.stdout + r.stderr
    r = run_manifest(manifest_folder)
    entry, = json.loads((manifest_folder / "MANIFEST.json").read_text())["weights"]
    assert r.returncode == 0 and "changed" not in r.stderr, r.stderr
    assert (entry["sha256"], entry["bytes"]) == (first["sha256"], first["bytes"])
    assert entry["fingerprint"] == first["fingerprint"]
    with torch.no_grad():
        next(model.parameters()).add_(1.0)  # other weights
    save_model(model, m)
    r = run_manifest(manifest_folder, "--verify")
    assert r.returncode == 1 and "not matching: m.safetensors" in r.stdout


def test_fingerprints_of_gone_files_come_from_the_results(manifest_folder):
    """Every eval point records its weights file and fingerprint: an entry whose file is
    gone gets that fingerprint, and a file whose results recorded other weights under
    its name is reported."""
    from conftest import tiny

    from varicodec.models import save_model

    rel = manifest_folder.relative_to(ROOT)
    save_model(tiny("hyperprior-base"), manifest_folder / "here.safetensors")
    gone = {"file": "gone.safetensors", "bytes": 1, "sha256": "0" * 64,
            "card": "gone.safetensors.json", "regenerate": "varicodec train …", "restore": None}
    (manifest_folder / "MANIFEST.json").write_text(json.dumps({"weights": [gone]}))
    results = manifest_folder / "results"
    results.mkdir()
    points = [{"source": f"{rel}/gone.safetensors", "fingerprint": "00aa"},
              {"source": f"{rel}/here.safetensors", "fingerprint": "ffff"},
              {"source": "elsewhere/gone.safetensors", "fingerprint": "1234"}]
    (results / "eval.json").write_text(json.dumps({"schema": "varicodec-eval/1",
                                                   "points": points}))
    (results / "other.json").write_text('["not a results file"]')
    r = run_manifest(manifest_folder, "--results", str(results))
    assert r.returncode == 0, r.stderr
    entries = {e["file"]: e for e in
               json.loads((manifest_folder / "MANIFEST.json").read_text())["weights"]}
    assert entries["gone.safetensors"]["fingerprint"] == "00aa"
    assert entries["gone.safetensors"]["fingerprint_from"] == "results"
    assert "fingerprint_from" not in entries["here.safetensors"]  # computed from the file
    assert "here.safetensors: results also measured other weights" in r.stderr
