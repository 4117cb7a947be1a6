"""Check the layer contracts (``[tool.importlinter]`` in pyproject.toml) on the installed layout.

Usage: ``python scripts/lint_imports.py [lint-imports options]`` (``--verbose``, ...).

import-linter builds its graph by walking the folder of each root package, so run in the
repository it would see ``tepo_agent/`` only: ``tools/`` and ``trainer/`` become
``tepo_agent.tools`` and ``tepo_agent.trainer`` through the package-dir mapping in pyproject.toml,
which it does not read, and every contract about them would pass without looking. This script
lays the Python files out in a temporary directory as a wheel installs them (each folder of the
``package-dir`` mapping at its package's path), then runs ``lint-imports`` there with a copy of
the repository's pyproject.toml. Its exit status is lint-imports' own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package_dirs(pyproject: Path) -> dict[str, Path]:
    """The ``[tool.setuptools] package-dir`` mapping: dotted package name → folder."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: pyproject.parent / folder for name, folder in mapping.items()}


def stage(repo: Path, target: Path) -> list[Path]:
    """Copy each mapped folder's ``*.py`` files to ``target/<package path>``; returns the copies."""
    copies: list[Path] = []
    for package, folder in sorted(package_dirs(repo / "pyproject.toml").items()):
        destination = target.joinpath(*package.split("."))
        for source in sorted(folder.rglob("*.py")):
            copy = destination / source.relative_to(folder)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, copy)
            copies.append(copy)
    return copies


def lint_imports_executable() -> str:
    """``lint-imports`` beside this interpreter (a venv's bin/), else the one on PATH."""
    beside = Path(sys.executable).parent / "lint-imports"
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        sys.exit(
            "lint_imports.py: lint-imports not found; install the test extras: "
            "pip install -e '.[test]' (the import-linter package)"
        )
    return found


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="tepo-lint-imports-") as tmp:
        stage(REPO, Path(tmp))
        shutil.copyfile(REPO / "pyproject.toml", Path(tmp) / "pyproject.toml")
        # lint-imports reads the contracts from pyproject.toml in its working directory and puts
        # that directory first on sys.path, so the staged copy is the `tepo_agent` it analyses
        # (an editable install's finder comes after the path entries).
        command = [lint_imports_executable(), "--no-cache", *argv]
        return subprocess.run(command, cwd=tmp, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
