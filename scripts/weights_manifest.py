"""Write the manifest of a folder of research weights (docs/weights-policy.md).

    python scripts/weights_manifest.py checkpoints/paper           # writes its MANIFEST.json
    python scripts/weights_manifest.py checkpoints/paper --verify   # the files here match it?

For every ``<name>.safetensors`` in the folder the manifest holds its size and sha256,
the fingerprint of the model it holds (``fingerprint``, by
:func:`varicodec.models.weights_fingerprint`: the one ``.vcd`` headers and ``varicodec
eval`` results carry; unlike the sha256 it does not cover the card embedded in the
file, which records the exporting git commit), its model card
(the ``<name>.safetensors.json`` beside it, which stays in git: lineage, steps,
recipe), the commands that regenerate it (train the recipe whose ``name`` the
card records, then export), and — while the bytes are in git history — the command that
restores exactly those bytes. Entries already in the manifest whose file is no longer
on disk are kept as they are, so the manifest outlives the files. A file regenerated
into the same weights as its entry's (a deterministic fold, say) keeps the entry's size
and sha256, which results name, and ``--verify`` reports it as "same weights". An entry
whose file is gone gets its fingerprint from the evaluations that measured it (every
point of a ``varicodec eval`` result in docs/results records its weights file and
fingerprint; ``"fingerprint_from": "results"``), and a file whose fingerprint differs from
what results recorded under its name is reported.

A regenerate command already in the manifest is kept: the one derived from the card
(train the last recipe, export) misses a chain of ``--init`` runs, so such commands are
written by hand (docs/weights-policy.md). ``--rederive NAME …`` replaces the command of
those files with the derived one; files whose bytes changed are listed so that their
command can be checked.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from varicodec.eval.results import load_results
from varicodec.models import load_model, weights_fingerprint
from varicodec.util import file_sha256, git

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def last_commit(rel: str) -> str | None:
    return git("log", "-1", "--format=%H", "--", rel, cwd=ROOT) or None


def recipe_config(recipe: str) -> str | None:
    """The config file whose ``name:`` line is ``recipe``."""
    for cfg in sorted(CONFIGS.rglob("*.yaml")):
        for line in cfg.read_text().splitlines():
            if line.strip() == f"name: {recipe}":
                return str(cfg.relative_to(ROOT))
    return None


def recorded_fingerprints(results: Path, folder: str) -> dict[str, set[str]]:
    """File name → the weights fingerprints that the evaluations under ``results``
    recorded for ``folder/<name>`` (each point's ``source`` and ``fingerprint``); files
    that are not eval results are skipped."""
    out: dict[str, set[str]] = defaultdict(set)
    for path in sorted(results.rglob("*.json")):
        try:
            points = load_results(path)["points"]
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        for p in points:
            src, fp = p.get("source"), p.get("fingerprint")
            if src and fp and str(Path(src).parent) == folder:
                out[Path(src).name].add(fp)
    return out


def fingerprint(path: Path) -> str | None:
    """The weights fingerprint of the model ``path`` holds, or ``None`` when it does not
    load as a model."""
    try:
        return weights_fingerprint(load_model(path)).hex()
    except Exception:  # noqa: BLE001 - not a model file of ours, whatever the loader says
        return None


def entry(path: Path) -> dict:
    rel = str(path.relative_to(ROOT))
    card_path = path.with_name(path.name + ".json")
    card = json.loads(card_path.read_text()) if card_path.exists() else {}
    recipe = (card.get("recipe") or {}).get("name")
    cfg = recipe_config(recipe) if recipe else None
    commit = last_commit(rel)
    return {
        "file": path.name,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
        "fingerprint": fingerprint(path),
        "card": card_path.name if card_path.exists() else None,
        "model": card.get("name"),
        "total_steps": card.get("total_steps"),
        "regenerate": (f"varicodec train --config {cfg} && varicodec export runs/{recipe} "
                       f"--out {rel}") if cfg else None,
        "restore": f"git restore --source={commit} -- {rel}" if commit else None,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--verify", action="store_true",
                    help="check the files present against the manifest; write nothing")
    ap.add_argument("--rederive", nargs="+", default=[], metavar="NAME",
                    help="files whose regenerate command is derived from the card again "
                         "instead of kept")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results",
                    help="the evaluations whose recorded fingerprints fill entries whose "
                         "file is gone (default: docs/results)")
    a = ap.parse_args()
    folder = a.folder.resolve()
    if not folder.is_dir():
        print(f"weights_manifest: error: no such folder: {a.folder}", file=sys.stderr)
        return 2
    manifest_path = folder / "MANIFEST.json"
    old = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"weights": []}
    known = {e["file"]: e for e in old["weights"]}
    files = sorted(folder.glob("*.safetensors"))
    if a.verify:
        bad, same_weights = [], []
        for p in files:
            e = known.get(p.name, {})
            if e.get("sha256") == file_sha256(p):
                continue
            same = e.get("fingerprint") is not None and e["fingerprint"] == fingerprint(p)
            (same_weights if same else bad).append(p.name)
        print(f"{len(files) - len(bad)} of {len(files)} files match {manifest_path.name}"
              + (f" ({', '.join(same_weights)}: same weights, another embedded card)"
                 if same_weights else "")
              + (f"; not matching: {', '.join(bad)}" if bad else ""))
        return 1 if bad else 0
    changed = []
    for p in files:
        new = entry(p)
        before = known.get(p.name)
        if before is not None:
            if new["restore"] is None:  # not in history (any more)
                new["restore"] = before.get("restore")
            if before.get("regenerate") and p.name not in a.rederive:
                new["regenerate"] = before["regenerate"]
            if before.get("note"):  # written by hand, like a chained regenerate command
                new["note"] = before["note"]
            same_weights = (new["fingerprint"] is not None
                            and before.get("fingerprint") == new["fingerprint"])
            if before.get("sha256") != new["sha256"] and same_weights:
                # the same weights exported again: results name the entry's file
                new["sha256"], new["bytes"] = before["sha256"], before["bytes"]
            elif before.get("sha256") != new["sha256"]:
                changed.append(p.name)
        known[p.name] = new
    for name in changed:
        print(f"{name} changed: check that its regenerate command still makes it "
              f"({known[name]['regenerate']})", file=sys.stderr)
    recorded = recorded_fingerprints(a.results.resolve(), str(folder.relative_to(ROOT)))
    for name, e in known.items():
        seen = recorded.get(name, set())
        if e.get("fingerprint") is None and len(seen) == 1 and not (folder / name).exists():
            e["fingerprint"], e["fingerprint_from"] = next(iter(seen)), "results"
        elif e.get("fingerprint") and seen - {e["fingerprint"]}:
            print(f"{name}: results also measured other weights under this name "
                  f"(fingerprint {', '.join(sorted(seen - {e['fingerprint']}))})",
                  file=sys.stderr)
    manifest = {
        "policy": "docs/weights-policy.md",
        "command": f"python scripts/weights_manifest.py {folder.relative_to(ROOT)}",
        "weights": [known[n] for n in sorted(known)],
    }
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {manifest_path.relative_to(ROOT)}: {len(known)} weights "
          f"({sum(e['bytes'] for e in known.values()) / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
