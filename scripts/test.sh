#!/usr/bin/env bash
# The test suite: lint, the hand-picked mutants of scripts/mutants.sh (a temporary copy
# of the source; each must make its tests fail), then pytest (slow tests included; they
# fit CI's budget). pytest runs last so that its summary is the run's closing line.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks scripts
bash scripts/mutants.sh
python -m pytest -q "$@"
