#!/usr/bin/env bash
# Runs the test suite in the project's virtual environment: .venv at the repository root (created
# with `python3 -m venv` on first use), or the one already activated. Installs CPU torch first,
# then the project editable with its test extras (skipped when pyproject.toml has not changed since),
# and, when run as root (as CI does), the Debian packages listed in scripts/system-packages.txt
# (otherwise it prints the command that installs them). Checks the import-linter layer contracts,
# then runs the suite. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/environment.sh
tepo_system_packages scripts/system-packages.txt
tepo_use_venv .venv
tepo_install test '.[test]'
python scripts/lint_imports.py --no-logo   # the layer contracts in pyproject.toml
exec python -m pytest -q "$@"
