#!/usr/bin/env bash
# Mutation score of the core modules with mutmut (docs/results/mutation.md).
#
#   bash scripts/mutation_score.sh                 # every mutant (hours on 2 cores)
#   bash scripts/mutation_score.sh 'varicodec.losses*'   # a subset, by mutmut's names
#   SAMPLE=60 SEED=0 bash scripts/mutation_score.sh   # 60 mutants per module, seed 0
#
# mutmut runs in a copy of the committed tree (git archive of $REF, default HEAD) under
# $WORK (default: a new temporary folder), never in the working tree. It forks one pytest per mutant from a warmed-up process, so torch
# and the tests run single-threaded (no OpenMP pool to fork). Needs `pip install mutmut`.
set -euo pipefail
ROOT=${ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
WORK=${WORK:-$(mktemp -d -t varicodec-mutation.XXXX)}
MUTMUT=${MUTMUT:-$ROOT/.venv/bin/mutmut}
mkdir -p "$WORK"
cd "$ROOT"
git archive "${REF:-HEAD}" src tests benchmarks configs README.md pyproject.toml | tar -x -C "$WORK"
cat >> "$WORK/pyproject.toml" <<'TOML'

[tool.mutmut]
source_paths = ["src"]
process_isolation = "forkserver"  # torch is not fork-safe once used
also_copy = ["benchmarks", "configs", "README.md"]
only_mutate = [
    "src/varicodec/layers/*.py",
    "src/varicodec/models/codec_model.py",
    "src/varicodec/models/guard.py",
    "src/varicodec/codec/format.py",
    "src/varicodec/codec/rate_control.py",
    "src/varicodec/losses.py",
]
pytest_add_cli_args = ["-p", "no:cacheprovider", "-m", "not slow", "-x", "-q"]
pytest_add_cli_args_test_selection = [
    "tests/test_models.py", "tests/test_gate.py", "tests/test_modulator.py",
    "tests/test_loss.py", "tests/test_format.py", "tests/test_format_fuzz.py",
    "tests/test_codec_rate_control.py", "tests/test_codec_api.py", "tests/test_threads.py",
    "tests/test_sparse.py", "tests/test_fold.py", "tests/test_content.py",
    "tests/test_edges.py", "tests/test_portability.py", "tests/test_golden.py",
]
TOML
cd "$WORK"
echo "mutation run in $WORK" >&2
export OMP_NUM_THREADS=1 VARICODEC_TEST_THREADS=1
names=("$@")
if [ -n "${SAMPLE:-}" ]; then  # generate (no mutant matches the pattern), then draw
    nice -n "${NICE:-10}" "$MUTMUT" run --max-children "${CHILDREN:-1}" 'no-such-mutant' >/dev/null || true
    "$MUTMUT" results --all true | awk -F: '{gsub(/ /, "", $1); print $1}' > all-mutants.txt
    mapfile -t names < <(python3 - "$SAMPLE" "${SEED:-0}" <<'PY'
import collections, random, sys
by_module = collections.defaultdict(list)
for name in open("all-mutants.txt").read().split():
    by_module[name.split(".x")[0].split(".xǁ")[0]].append(name)
rng = random.Random(int(sys.argv[2]))
for module, names in sorted(by_module.items()):
    for n in sorted(rng.sample(sorted(names), min(int(sys.argv[1]), len(names)))):
        print(n)
PY
)
    printf '%s\n' "${names[@]}" > sample.txt
    echo "sampled ${#names[@]} of $(wc -l < all-mutants.txt) mutants (sample.txt)" >&2
fi
nice -n "${NICE:-10}" "$MUTMUT" run --max-children "${CHILDREN:-1}" "${names[@]}" || true
"$MUTMUT" results --all true > results.txt || "$MUTMUT" results > results.txt
echo "results: $WORK/results.txt" >&2
