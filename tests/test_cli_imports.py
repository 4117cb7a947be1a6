"""What each command loads, read from ``sys.modules`` of a fresh interpreter after it ran.

``--help`` of every command loads none of the heavy libraries and no trainer code (the parser
imports each command module, and each imports the library inside its handler); the store-only
commands, run for real on a real SQLite file, load no torch; the serving commands, run for real
(``serve`` with ``run --base-url`` against it, ``generate``, ``tool``), load no trainer code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tepo_agent.cli import build_parser
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory

# Runs each argv (a JSON list of lists) through the CLI's main, then prints one JSON line.
_PROBE = """
import json, sys
from tepo_agent.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as exc:  # --help exits from the parser
        codes.append(exc.code)
print("\\n" + json.dumps({"codes": codes, "modules": sorted(sys.modules)}))
"""

# Runs one command and writes sys.modules to a file when the process exits (serve runs until
# interrupted).
_AT_EXIT = """
import atexit, json, sys
from tepo_agent.cli import main
out = sys.argv[1]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.exit(main(json.loads(sys.argv[2])))
"""

# One generation over HTTP with the agent's modules loaded; prints [tokens, torch loaded].
_HTTP_PROBE = """
import json, sys
import tepo_agent.agent.graph, tepo_agent.agent.recorder, tepo_agent.chat.format, tepo_agent.store
from tepo_agent.agent.sync import run_sync
from tepo_agent.backends import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.entropy import turn_entropy

async def generate():
    config = HttpBackendConfig(sys.argv[1], "tiny", entropy_estimator="surprisal")
    backend = HttpBackend(config, vocab_size=512)
    try:
        return await backend.generate([1, 2, 3], SamplingParams(max_tokens=3, seed=0))
    finally:
        await backend.aclose()

generation = run_sync(generate())
turn_entropy(generation.entropies)
print(json.dumps([len(generation.token_ids), "torch" in sys.modules]))
"""

HEAVY = ("torch", "transformers", "langgraph", "langchain_core", "sqlite_utils", "httpx")
"""What ``--help`` must not load: each costs a large share of a second or more to import."""


def _trainer_modules(modules: Sequence[str]) -> list[str]:
    return [m for m in modules if m == "tepo_agent.trainer" or m.startswith("tepo_agent.trainer.")]


def _loaded(modules: Sequence[str], names: Sequence[str]) -> list[str]:
    return [name for name in names if name in modules]


def _cli(*argvs: list[str], timeout: float = 180) -> tuple[list[int], list[str], str]:
    """Exit codes, sys.modules and stdout of one fresh interpreter that ran every argv."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(list(argvs))],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.stdout.strip(), proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["codes"], result["modules"], proc.stdout + proc.stderr


def _command_paths(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> list[list[str]]:
    """Every command and sub-command of ``parser`` (``trajectories``, ``trajectories list``...)."""
    paths: list[list[str]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths.append([*prefix, name])
                paths.extend(_command_paths(sub, (*prefix, name)))
    return paths


def test_help_of_every_command_loads_no_heavy_library_and_no_trainer():
    # `tool --help` lists each tool's arguments from the tools' own schemas, which means loading
    # the tools (LangChain, pydantic, sqlite-utils); it is checked apart, with the rest of HEAVY.
    commands = [c for c in _command_paths(build_parser()) if c != ["tool"]]
    assert ["serve"] in commands and ["trajectories", "list"] in commands  # the walk works
    codes, modules, output = _cli(["--help"], *([*c, "--help"] for c in commands))
    assert codes == [0] * (len(commands) + 1), output
    assert "usage: tepo-agent trajectories list" in output
    assert _loaded(modules, HEAVY) == []
    assert _trainer_modules(modules) == []


def test_tool_help_lists_arguments_without_torch_or_trainer():
    codes, modules, output = _cli(["tool", "--help"])
    assert codes == [0], output
    assert "expression" in output and "query" in output  # the calculator's and search's arguments
    assert _loaded(modules, ("torch", "transformers", "langgraph", "httpx")) == []
    assert _trainer_modules(modules) == []


def test_importing_the_package_loads_none_of_its_modules():
    code = "import sys, tepo_agent; print(sorted(m for m in sys.modules if m.startswith('tepo_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # only the two helpers that make the public names lazy and keep old module paths working
    assert out.stdout.strip() == "['tepo_agent', 'tepo_agent._lazy', 'tepo_agent._moved']"


@pytest.fixture
def store_with_one_run(tmp_path: Path) -> tuple[Path, str]:
    db = tmp_path / "store.db"
    with TrajectoryStore(db) as store:
        trajectory_id = store.add(Trajectory(task="What is 2+2?", prompt_token_ids=[1, 2, 3]))
    return db, trajectory_id


def test_store_only_commands_run_without_torch(store_with_one_run: tuple[Path, str]):
    db, trajectory_id = store_with_one_run
    codes, modules, output = _cli(
        ["feedback", trajectory_id, "0.75", "--db", str(db)],
        ["trajectories", "list", "--db", str(db)],
        ["trajectories", "show", trajectory_id, "--db", str(db)],
    )
    assert codes == [0, 0, 0], output
    assert output.count(trajectory_id) >= 3 and "What is 2+2?" in output
    with TrajectoryStore(db) as store:
        assert store.get(trajectory_id).score == 0.75  # the feedback really landed
    assert _loaded(modules, ("torch", "transformers", "langgraph")) == []
    assert _trainer_modules(modules) == []


def test_the_tool_command_loads_no_trainer_and_no_torch():
    codes, modules, output = _cli(["tool", "calculator", '{"expression": "2*(3+4)"}'])
    assert codes == [0], output
    assert "14" in output
    assert _loaded(modules, ("torch", "transformers", "langgraph")) == []
    assert _trainer_modules(modules) == []


def test_generate_loads_no_trainer(default_model_dir: Path):
    argv = ["generate", "Hi", "--model", str(default_model_dir), "--max-tokens", "3"]
    codes, modules, output = _cli([*argv, "--device", "cpu", "--json"])
    assert codes == [0], output
    assert "torch" in modules  # it really sampled in process
    assert _trainer_modules(modules) == []


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServeProcess:
    """``tepo-agent serve`` in its own process, which writes its ``sys.modules`` on exit."""

    def __init__(self, model_dir: Path, tmp_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._modules_file = tmp_path / "serve-modules.json"
        argv = ["serve", "--model", str(model_dir), "--port", str(self.port)]
        argv += ["--served-model-name", "tiny", "--device", "cpu"]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _AT_EXIT, str(self._modules_file), json.dumps(argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "TEPO_AGENT_API_KEY": ""},
        )

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._proc.poll() is not None:
                raise AssertionError(self._proc.stdout.read() if self._proc.stdout else "exited")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"tepo-agent serve did not answer in {timeout_s} s"
            time.sleep(0.3)

    def stop(self) -> list[str]:
        """Interrupt it as Ctrl-C does (uvicorn shuts down, main returns); its sys.modules."""
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return json.loads(self._modules_file.read_text())


@pytest.fixture
def serve_process(default_model_dir: Path, tmp_path: Path) -> Iterator[ServeProcess]:
    server = ServeProcess(default_model_dir, tmp_path)
    try:
        server.wait_ready()
        yield server
    finally:
        if server._proc.poll() is None:
            server._proc.kill()
            server._proc.wait()


def test_serve_and_the_http_path_load_no_trainer_and_http_generation_no_torch(
    serve_process: ServeProcess, default_model_dir: Path, tmp_path: Path
):
    db = tmp_path / "http.db"
    argv = ["run", "What is 2+3?", "--model", str(default_model_dir), "--base-url"]
    argv += [serve_process.url, "--served-model", "tiny", "--db", str(db)]
    codes, client_modules, output = _cli([*argv, "--entropy", "surprisal", "--max-new-tokens", "4"])
    assert codes == [0], output
    assert "httpx" in client_modules  # it really ran over HTTP
    assert _trainer_modules(client_modules) == []
    # The agent over HTTP, its chat format built from the model directory, loads no torch.
    assert "torch" not in client_modules and "langgraph" in client_modules
    with TrajectoryStore(db) as store:
        assert len(store.list()) == 1

    # The HTTP path itself, below the chat format: the agent's modules, a generation over HTTP
    # and its turn entropy load no torch (tests/test_http_without_torch.py: the chat format).
    probe = subprocess.run(
        [sys.executable, "-c", _HTTP_PROBE, serve_process.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert probe.returncode == 0, probe.stdout + probe.stderr
    generated, torch_loaded = json.loads(probe.stdout.strip().splitlines()[-1])
    assert generated >= 1
    assert torch_loaded is False

    served_modules = serve_process.stop()
    assert "uvicorn" in served_modules and "torch" in served_modules  # it really served
    assert _trainer_modules(served_modules) == []
