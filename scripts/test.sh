#!/usr/bin/env bash
# Installs what the test suite needs (CPU torch first, so pip never pulls a CUDA build), then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q "$@"
