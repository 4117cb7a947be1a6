#!/usr/bin/env bash
# Installs tepo-agent (CPU torch first, so pip never pulls a CUDA build), then runs the demo:
# the whole online-learning loop on the embedded default model. Extra arguments go to
# `tepo-agent demo` (e.g. --backend vllm, --reward dense, --fresh).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e .
python3 -m tepo_agent demo "$@"
