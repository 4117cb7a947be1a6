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


# A trainer killed (SIGKILL) at a chosen point of its own code: the real `tepo-agent train`,
# with one function wrapped so that its KILL_AT-th call finishes its work and then kills the
# process (the work done: the directory written, the registry row absent, the shards on disk).
_KILLING_TRAIN = """
import importlib, os, signal, sys
owner_path, attr = os.environ["KILL_IN"].rsplit(".", 1)
module_path, _, class_name = owner_path.partition(":")
owner = importlib.import_module(module_path)
if class_name:
    owner = getattr(owner, class_name)
original, calls = getattr(owner, attr), [0]
def wrapped(*args, **kwargs):
    calls[0] += 1
    if calls[0] == int(os.environ["KILL_AT"]) and os.environ.get("KILL_BEFORE") == "1":
        os.kill(os.getpid(), signal.SIGKILL)
    out = original(*args, **kwargs)
    if calls[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return out
setattr(owner, attr, wrapped)
from tepo_agent.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _train_killed(db: Path, steps: int, kill_in: str, kill_at: int, before: bool) -> int:
    env = {**os.environ, "KILL_IN": kill_in, "KILL_AT": str(kill_at)}
    env["KILL_BEFORE"] = str(int(before))
    return subprocess.run(
        [sys.executable, "-c", _KILLING_TRAIN, "train", "--db", str(db), "--steps", str(steps),
         *TRAIN],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, timeout=600,
    ).returncode  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kill_in", "kill_at", "before", "live_after_kill", "state_after_kill"),
    [
        # the policy directory written (weights and tokenizer files, not yet renamed into place)
        ("tepo_agent.trainer.checkpoint.copy_model_assets", 1, False, 0, 1),
        # the directory in place, the registry row never written
        ("tepo_agent.policy.registry:PolicyRegistry.register", 1, True, 0, 1),
        # the trainer state after v1 was published: its shards written, never renamed into place
        ("torch.distributed.checkpoint.save", 2, False, 1, 1),
    ],
    ids=["mid-policy-directory", "between-directory-and-register", "mid-state-checkpoint"],
)
def test_a_trainer_killed_mid_publish_or_mid_checkpoint_loses_nothing_committed(
    tmp_path: Path,
    kill_in: str,
    kill_at: int,
    before: bool,
    live_after_kill: int,
    state_after_kill: int,
) -> None:
    model_dir = make_model(tmp_path / "model")
    db = tmp_path / "t.db"
    collect(model_dir, db, groups=3, n=4, scores=[1.0, 0.0])  # three steps of data
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))

    assert _train_killed(db, 2, kill_in, kill_at, before) == -signal.SIGKILL
    with PolicyRegistry(db) as registry:
        live = registry.live()
        assert live is not None and live.version == live_after_kill
        registered = {Path(r.path).resolve() for r in registry.list()}
        assert [r.version for r in registry.list()] == list(range(live_after_kill + 1))
    saved = load_latest_state(f"{db}.trainer")  # LATEST still names a complete state
    assert saved is not None and saved.state.step == state_after_kill
    policies = Path(f"{db}.trainer") / "policies"
    unregistered = [p for p in policies.glob("v-*") if p.resolve() not in registered]
    assert len(unregistered) == (1 if "register" in kill_in else 0)  # an orphan, never served

    resumed = _train(db, 3 - state_after_kill)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"resuming from step {state_after_kill}" in out
    with PolicyRegistry(db) as registry:
        live = registry.live()
        assert live is not None and live.version == live_after_kill + 1
        assert Path(live.path).resolve() not in unregistered  # never the orphaned directory
    with TrajectoryStore(db) as store:
        integrity = store.read("PRAGMA integrity_check")[0]
        assert store.train_steps()[-1].cursor_seq == 12  # every trajectory trained on
    assert next(iter(integrity.values())) == "ok"
