#!/usr/bin/env bash
# The test suite: lint, then pytest (slow tests included; they fit CI's budget).
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks
python -m pytest -q "$@"
