"""The distribution installs tools/ and trainer/ under the tepo_agent namespace only.

Applications very often have their own ``tools.py``: a wheel or editable install of tepo-agent
must provide ``tepo_agent.tools`` and ``tepo_agent.trainer`` and never top-level ``tools`` or
``trainer`` packages.
"""

from __future__ import annotations

import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, json, sys
import tepo_agent, tepo_agent.tools, tepo_agent.trainer, tepo_agent.cli
from tepo_agent.tools.calculator import evaluate
from tepo_agent.trainer.rewards import sparse_reward
print(json.dumps({
    "tools": tepo_agent.tools.__file__,
    "trainer": tepo_agent.trainer.__file__,
    "top_tools": importlib.util.find_spec("tools") is not None,
    "top_trainer": importlib.util.find_spec("trainer") is not None,
    "calc": evaluate("6*7"),
}))
"""


def _site_dirs() -> list[str]:
    """The site-packages folders this interpreter imports from (venv, system, user)."""
    dirs = site.getsitepackages()
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    return dirs


def _venv(path: Path) -> tuple[Path, str]:
    """A fresh venv whose own site-packages come first, then this interpreter's (torch & co.).

    The test suite runs in a virtual environment (the README's command makes one) or in a system
    Python; either way the dependencies live in this interpreter's site folders, which a venv made
    with ``system_site_packages`` would not see when this interpreter is itself a venv. A ``.pth``
    line appends a folder to ``sys.path`` without running that folder's own ``.pth`` files, so the
    outer editable install of tepo-agent (a finder that a ``.pth`` file installs) stays out.
    """
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(own) / "outer-site-packages.pth").write_text("\n".join(_site_dirs()) + "\n")
    return python, own


def _probe(python: Path, cwd: Path) -> dict:
    import json

    out = subprocess.run(
        [str(python), "-c", PROBE], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_wheel_installs_tools_and_trainer_under_tepo_agent(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("tepo_agent-*.whl")
    # The bootstrapped default model ships inside the wheel: nothing to build after installing.
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    shipped = "tepo_agent/assets/default-model/"
    for name in ("model.safetensors", "bootstrap.json", "tokenizer.json", "world/search.db"):
        assert shipped + name in names
    # so does the vLLM plugin's own distribution, which `tepo-agent vllm install` installs
    plugin = "tepo_agent/vllm/plugin_dist/"
    for name in ("pyproject.toml", "README.md", "tepo_vllm/entropy.py", "tepo_vllm/reload.py"):
        assert plugin + name in names
    python, purelib = _venv(tmp_path / "venv")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-compile",
            "-q",
            "--target",
            purelib,
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    got = _probe(python, tmp_path)
    assert got["tools"].startswith(purelib)
    assert got["tools"].endswith("tepo_agent/tools/__init__.py")
    assert got["trainer"].startswith(purelib)
    assert not got["top_tools"] and not got["top_trainer"]
    assert got["calc"] == 42


def test_editable_install_imports_the_checkout(tmp_path):
    # The project is installed editable for the test run (the README's test command does it):
    # from a directory outside the checkout, the namespace maps onto the checkout's folders.
    got = _probe(Path(sys.executable), tmp_path)
    assert Path(got["tools"]) == REPO / "tools" / "__init__.py"
    assert Path(got["trainer"]) == REPO / "trainer" / "__init__.py"
    assert not got["top_tools"] and not got["top_trainer"]
