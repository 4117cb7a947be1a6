#!/usr/bin/env bash
# Runs the demo, the whole online-learning loop on the embedded default model, in the project's
# virtual environment: .venv at the repository root (created with `python3 -m venv` on first use),
# or the one already activated. Installs CPU torch first, then the project editable (skipped when
# pyproject.toml has not changed since). Arguments go to `tepo-agent demo` (e.g. --backend vllm,
# --reward dense, --fresh, --help).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/environment.sh
tepo_use_venv .venv
tepo_install demo .
exec python -m tepo_agent demo "$@"
