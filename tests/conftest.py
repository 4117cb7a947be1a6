"""Shared pytest fixtures."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _postgres import PostgresServer, PostgresUnavailable, stop_on_sigterm


# -- the embedded default model (tepo_agent.model.default) ---------------------------------------
@pytest.fixture(scope="session")
def default_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight default model (tokenizer + tiny Qwen2, seed 0), built once per session."""
    from tepo_agent.model.default import init_model

    return init_model(tmp_path_factory.mktemp("default-model") / "model", seed=0)


@pytest.fixture(scope="session")
def stand_in_home(default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``TEPO_AGENT_HOME`` whose bootstrapped default model is the random-weight one.

    ``resolve_model_dir()`` (every command's and snippet's default) then finds "the default
    model" without the half-hour bootstrap: enough for tests of the machinery, not of answers.
    """
    import json
    import shutil

    from tepo_agent.paths import BOOTSTRAPPED_MODEL_NAME

    root = tmp_path_factory.mktemp("home")
    target = root / "models" / BOOTSTRAPPED_MODEL_NAME
    shutil.copytree(default_model_dir, target)
    (target / "bootstrap.json").write_text(json.dumps({"stand_in": "random weights, for tests"}))
    return root


# -- a `tepo-agent serve` process started by a test ----------------------------------------------
def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 180) -> None:
    """Block until ``url``/health answers 200; fail with the server's output if it exits first or
    does not come up within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"tepo-agent serve exited: {proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"tepo-agent serve did not come up at {url} within {timeout_s:g} s")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def wait_healthy() -> Callable[..., None]:
    """:func:`_wait_healthy`, for tests and fixtures of any scope and folder."""
    return _wait_healthy


# -- a real PostgreSQL server (tests/_postgres.py) -----------------------------------------------
@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the session (unix socket, stopped at the end).

    Fails, never skips, when PostgreSQL is not installed: the store conformance suite must run.
    """
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    with stop_on_sigterm(server):  # a killed run (CI timeout, Ctrl-\) leaves no server behind
        yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of the session server's shared database, emptied of rows for this test (its
    migrated schema stays); a test that needs an empty database calls ``new_database()``."""
    return postgres_server.clean_database()
