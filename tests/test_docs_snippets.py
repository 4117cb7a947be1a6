"""Every Python snippet in README.md and docs/ runs as written.

Each ```python block is run as a script, in order, in one fresh working directory, as a user
would paste it: against "the default model" and a live ``tepo-agent serve`` of it. The default
model here is the random-weight one installed where the bootstrapped default lives (building the
real one takes half an hour; the snippets exercise the machinery, not the model's answers). The
only change made to a snippet is the server's port: the docs say 8000, the test serves on a free
one.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tepo_agent.net import free_port
from tepo_agent.paths import BOOTSTRAPPED_MODEL_NAME

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
SNIPPETS = [
    (f"{path.relative_to(ROOT)}#{i}", code)
    for path in DOCS
    for i, code in enumerate(_BLOCK.findall(path.read_text()))
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(stand_in_home: Path) -> Path:
    return stand_in_home


@pytest.fixture(scope="module")
def server(home: Path, wait_healthy: Callable[..., None]) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "TEPO_AGENT_HOME": str(home)}
    cmd = [sys.executable, "-m", "tepo_agent", "serve", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 180)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("snippets")


def test_the_docs_have_python_snippets() -> None:
    assert len(SNIPPETS) >= 4, [name for name, _ in SNIPPETS]


@pytest.mark.parametrize(("name", "code"), SNIPPETS, ids=[name for name, _ in SNIPPETS])
def test_snippet_runs_as_written(
    name: str, code: str, home: Path, server: str, workdir: Path
) -> None:
    script = workdir / (re.sub(r"\W", "_", name) + ".py")
    script.write_text(code.replace("http://127.0.0.1:8000", server))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=workdir,
        env={**os.environ, "TEPO_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{name}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"


def test_stated_build_times_are_the_measured_one() -> None:
    results = (ROOT / "benchmarks/RESULTS.md").read_text()
    measured = re.search(r"## Building the bootstrapped default model.*?([\d,]+) s", results, re.S)
    assert measured is not None
    figure = f"{measured.group(1)} s"
    for path in [*DOCS, ROOT / "tepo_agent" / "cli" / "bootstrap.py"]:
        text = path.read_text()
        assert "12–15 minutes" not in text and "a few minutes" not in text, path
    for path in (ROOT / "README.md", ROOT / "docs/guide.md"):
        assert figure in path.read_text(), path


def test_cli_run_against_the_server_finds_its_model(server: str, home: Path, workdir: Path) -> None:
    # the guide's `run --base-url http://127.0.0.1:8000/v1`, without --served-model
    cmd = [sys.executable, "-m", "tepo_agent", "run", "What is 17 * 23?", "--json"]
    cmd += ["--base-url", f"{server}/v1", "--max-new-tokens", "8", "--db", "http.db"]
    done = subprocess.run(
        cmd,
        cwd=workdir,
        env={**os.environ, "TEPO_AGENT_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["policy_version"] == 0
    # `serve` without --model serves the default model, not a random-weight one of its own
    models = httpx.get(f"{server}/v1/models").json()["data"]
    assert [m["id"] for m in models] == [BOOTSTRAPPED_MODEL_NAME]
