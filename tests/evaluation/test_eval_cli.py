"""``tepo-agent eval`` end to end: in process (stored per version) and against a real server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tepo_agent.evaluation import list_evaluations
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore

TINY = DefaultModelConfig(
    hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=2048,
)  # fmt: skip


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("eval-cli") / "model", seed=0, config=TINY)


def _eval(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TEPO_AGENT_HOME": str(home), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tepo_agent", "eval", "--n", "2", "--max-new-tokens", "8"]
    return subprocess.run(
        [*cmd, "--no-progress", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_eval_of_a_registry_version_prints_json_and_stores_it(model: Path, tmp_path: Path):
    db = tmp_path / "app.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model))
    out = _eval("--suite", "all", "--db", str(db), "--json", home=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert payload["policy_version"] == 0 and payload["entropy"] == "exact"
    assert list(payload["summary"]) == ["math", "knowledge", "deep_search", "all"]
    every = payload["summary"]["all"]
    assert every["items"] == 6 and 0.0 <= every["accuracy"]["low"] <= every["accuracy"]["high"]
    assert set(every["format_errors"]) == {"malformed", "unknown_tool", "tool_error", "timeout"}
    with TrajectoryStore(db) as store:
        (row,) = list_evaluations(store, policy_version=0)
        assert row["id"] == payload["evaluation_id"] and row["label"] == "eval"
        assert store.count() == 0  # no trajectories from held-out runs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_eval_against_a_server_says_where_its_entropies_come_from(model: Path, tmp_path: Path):
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "serve", "--model", str(model), "--port", str(port),
         "--served-model-name", "tiny", "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        url = f"http://127.0.0.1:{port}"
        common = ("--suite", "math", "--base-url", url, "--served-model", "tiny", "--model")
        out = _eval(*common, str(model), home=tmp_path)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f"server {url} (tiny)" in out.stdout and "entropies: exact (server)" in out.stdout
        est = _eval(*common, str(model), "--entropy", "surprisal", "--json", home=tmp_path)
        assert est.returncode == 0, est.stderr[-2000:]
        assert json.loads(est.stdout)["entropy"] == "estimated (surprisal)"
    finally:
        server.terminate()
        server.wait(timeout=30)
