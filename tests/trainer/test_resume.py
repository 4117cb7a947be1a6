"""Crash safety: SIGKILL during training keeps the live version serving; a restart resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _tepo_data import collect, make_model

from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trainer.checkpoint import load_latest_state

TRAIN = ["--batch", "4", "--lr", "1e-3", "--device", "cpu", "--no-progress",
         "--gate-tasks", "1", "--gate-margin", "1.0", "--gate-format-margin", "1.0"]  # fmt: skip


def _train(db: Path, steps: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "train", "--db", str(db), "--steps", str(steps),
         *TRAIN],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_run_keeps_serving_and_restart_resumes(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    db = tmp_path / "t.db"
    collect(model_dir, db, groups=3, n=4, scores=[1.0, 0.0])  # three steps of data
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))

    proc = _train(db, 3)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("step 1:"):
            os.kill(proc.pid, signal.SIGKILL)  # the trainer is inside step 2 now
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    with PolicyRegistry(db) as registry:
        live = registry.live()
        assert live is not None and live.version == 0  # nothing half-published
        assert [r.version for r in registry.list()] == [0]
    saved = load_latest_state(f"{db}.trainer")
    assert saved is not None and saved.state.step in (1, 2)
    assert saved.state.cursor_seq == 4 * saved.state.step

    resumed = _train(db, 3 - saved.state.step)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert f"resuming from step {saved.state.step}" in out
    assert f"step {saved.state.step + 1}:" in out
    with TrajectoryStore(db) as store:
        steps = store.train_steps()
        integrity = store.read("PRAGMA integrity_check")[0]
    assert steps[-1].step == 3 and steps[-1].cursor_seq == 12
    assert len({s.step for s in steps}) == len(steps)
    assert next(iter(integrity.values())) == "ok"
    with PolicyRegistry(db) as registry:
        live = registry.live()
        assert live is not None and live.version == 1
