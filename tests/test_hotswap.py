"""Hot swap: a running agent picks up what a separate trainer process publishes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore

sys.path.insert(0, str(Path(__file__).parent / "trainer"))
from _tepo_data import agent_for, collect, make_model


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tepo_agent", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_running_agent_uses_what_a_trainer_process_publishes(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    db = tmp_path / "t.db"
    collect(model_dir, db, groups=2, n=4, scores=[1.0, 0.0])
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))

    with (
        TrajectoryStore(db) as store,
        TransformersBackend.from_pretrained(model_dir, device="cpu", dtype="float32") as backend,
    ):
        agent = agent_for(backend, model_dir, store)
        follower = PolicyFollower(db, InProcessTarget(backend))
        assert follower.current_version == 0
        before = agent.run("What is 2 + 3?")
        assert before.trajectory.policy_version == 0

        done = _cli("train", "--db", str(db), "--steps", "2", "--batch", "4", "--lr", "1e-3",
                    "--gate-tasks", "1", "--gate-margin", "1.0", "--gate-format-margin", "1.0",
                    "--device", "cpu", "--no-progress")  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        assert "published version 1 (live)" in done.stdout

        assert follower.poll_once() == 1  # the agent process never restarted
        after = agent.run("What is 2 + 3?")
        assert after.trajectory.policy_version == 1
        assert store.get(after.trajectory_id).policy_version == 1  # type: ignore[arg-type]
        live = PolicyRegistry(store).live()
        assert live is not None
        published = load_file(str(Path(live.path) / "model.safetensors"))
        served = backend.model.state_dict()
        assert all((served[k] == v).all() for k, v in published.items())

        # rollback through the CLI; the follower swaps the base back in between requests
        rolled = _cli("rollback", "0", "--db", str(db))
        assert rolled.returncode == 0, rolled.stderr
        assert follower.poll_once() == 0
        assert agent.run("What is 2 + 3?").trajectory.policy_version == 0
        follower.stop()


def test_follower_thread_swaps_between_requests_and_survives_bad_versions(tmp_path: Path) -> None:
    model_dir = make_model(tmp_path / "model")
    other = make_model(tmp_path / "other", seed=1)
    db = tmp_path / "t.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))
        broken = registry.register(str(tmp_path / "missing"), kind="full", parent=0)
        registry.promote(broken)
        with TransformersBackend.from_pretrained(model_dir, device="cpu") as backend:
            follower = PolicyFollower(db, InProcessTarget(backend), current_version=0)
            with pytest.raises(Exception, match="safetensors"):
                follower.poll_once()
            assert backend.policy_version == 0 and follower.current_version == 0
            good = registry.register(str(other), kind="full", parent=0)
            registry.promote(good)
            swapped: list[int] = []
            follower.on_swap = lambda r: swapped.append(r.version)
            follower.start(poll_interval_s=0.05)
            import time

            deadline = time.monotonic() + 30
            while not swapped and time.monotonic() < deadline:
                time.sleep(0.05)
            follower.stop()
            assert swapped == [good] and backend.policy_version == good
