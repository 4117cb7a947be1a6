#!/usr/bin/env bash
# Installs what the test suite needs (CPU torch first, so pip never pulls a CUDA build), checks the
# import-linter layer contracts, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
python3 scripts/lint_imports.py --no-logo   # the layer contracts in pyproject.toml
python3 -m pytest -q "$@"
