#!/usr/bin/env bash
# The test suite: lint, pytest (slow tests included; they fit CI's budget), then the
# hand-picked mutants of scripts/mutants.sh, each of which must make its tests fail.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks
python -m pytest -q "$@"
# hand-picked mutants (a temporary copy of the source) that the tests must kill
bash scripts/mutants.sh
