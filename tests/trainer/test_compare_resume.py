"""``tepo-agent compare`` killed mid-run resumes without redoing finished arms (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tepo_agent.model.default import init_model
from tepo_agent.tasks.world import build_world


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = init_model(tmp_path_factory.mktemp("cmp") / "model", seed=0)
    build_world(0, model / "world")
    return model


def _command(model: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "tepo_agent", "compare", "--model", str(model), "--out", str(out),
        "--rewards", "outcome,sparse", "--seeds", "2", "--eval-n", "1", "--no-progress",
        "--budget", "rounds=1,tasks=3,group=2,steps=1",
    ]  # fmt: skip


def test_a_killed_compare_resumes_where_it_stopped(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TEPO_AGENT_HOME": str(tmp_path / "home")}
    first = out / "outcome-seed1" / "result.json"
    proc = subprocess.Popen(
        _command(model_dir, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while not first.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first.is_file(), proc.communicate()[0].decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)  # mid-run: the second arm has started (or is starting)
    proc.wait()
    finished = json.loads(first.read_text())
    stamp = first.stat().st_mtime_ns
    assert not (out / "sparse-seed2" / "result.json").is_file()  # the kill came before the end

    done = subprocess.run(
        _command(model_dir, out), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "[1/4] outcome seed 1: already finished" in done.stdout
    assert "[4/4] sparse seed 2: done in" in done.stdout
    assert first.stat().st_mtime_ns == stamp and json.loads(first.read_text()) == finished
    report = json.loads((out / "compare.json").read_text())
    assert report["finished"] == report["planned"] == 4
    assert [r["arm"] for r in report["rows"]] == ["outcome", "sparse"]
    assert "| sparse | 2 |" in (out / "compare.md").read_text()


def test_a_compare_with_other_settings_is_refused(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"config": {"seeds": 9}, "model": "x"}))
    env = {**os.environ, "TEPO_AGENT_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        _command(model_dir, out), env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1 and "other settings" in done.stderr
