"""docs/weights-policy.md: which weights git keeps, and the manifests of the rest."""

import json
import subprocess
from pathlib import Path

import pytest

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
