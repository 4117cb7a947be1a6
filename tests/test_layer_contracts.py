"""The layer contracts (import-linter, ``[tool.importlinter]`` in pyproject.toml) hold, and they
really see ``tools/`` and ``trainer/``, which join ``tepo_agent`` only through the package-dir
mapping (scripts/lint_imports.py lays the files out as a wheel installs them)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_TREE = ("tepo_agent", "tools", "trainer", "scripts", "pyproject.toml")


def _lint(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(repo / "scripts" / "lint_imports.py"), "--no-logo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The repository's package folders, the script and pyproject.toml, copied."""
    for name in _TREE:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, tmp_path / name)
    return tmp_path


def _append_import(module: Path, statement: str) -> None:
    module.write_text(module.read_text() + f"\n{statement}  # a forbidden import\n")


def test_the_contracts_hold_on_the_repository():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
    assert "BROKEN" not in result.stdout


def test_the_unmodified_copy_passes(copy: Path):
    result = _lint(copy)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_tool_importing_the_runtime_breaks_a_contract(copy: Path):
    _append_import(copy / "tools" / "calculator.py", "import tepo_agent.store")
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tepo_agent.tools.calculator -> tepo_agent.store" in result.stdout


def test_a_tool_importing_the_package_root_breaks_a_contract(copy: Path):
    _append_import(copy / "tools" / "search.py", "from tepo_agent import TrajectoryStore")
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Tools never import the package root" in result.stdout
    assert "tepo_agent.tools.search -> tepo_agent" in result.stdout


def test_the_trainer_importing_the_server_breaks_a_contract(copy: Path):
    _append_import(copy / "trainer" / "rewards.py", "import tepo_agent.server.protocol")
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tepo_agent.trainer.rewards -> tepo_agent.server.protocol" in result.stdout


def test_the_runtime_importing_the_trainer_breaks_a_contract(copy: Path):
    # a lazy import inside a function counts: serving code must not reach the trainer at all
    _append_import(
        copy / "tepo_agent" / "entropy.py",
        "def _late() -> None:\n    import tepo_agent.trainer.loss",
    )
    result = _lint(copy)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "tepo_agent.entropy -> tepo_agent.trainer.loss" in result.stdout


def test_a_new_runtime_module_must_be_given_a_layer(copy: Path):
    (copy / "tepo_agent" / "stray.py").write_text('"""A module no contract places."""\n')
    result = _lint(copy)
    assert result.returncode != 0
    assert "tepo_agent.stray" in result.stdout + result.stderr
