"""Periodic retraining: the trigger rule, and a real watch round on collected trajectories."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from _tepo_data import collect, make_model

from tepo_agent.errors import ConfigError
from tepo_agent.trainer.eval_gate import GateConfig
from tepo_agent.trainer.loop import TrainConfig
from tepo_agent.trainer.training_run import RunConfig, TrainingRun
from tepo_agent.trainer.watch import WatchConfig, due, watch


@pytest.mark.parametrize(
    ("waiting", "since_s", "min_new", "every_s", "expected"),
    [
        (0, 1e9, 1, 1.0, False),  # nothing waiting: never, however long it has been
        (3, 0.0, 4, None, False),  # count trigger not reached, no time trigger
        (4, 0.0, 4, None, True),  # count trigger reached
        (1, 59.0, None, 60.0, False),  # time trigger not reached
        (1, 60.0, None, 60.0, True),  # time trigger reached with one waiting
        (2, 61.0, 100, 60.0, True),  # whichever comes first: time
        (100, 0.0, 100, 60.0, True),  # whichever comes first: count
    ],
)
def test_due_rule_table(waiting, since_s, min_new, every_s, expected):
    assert due(waiting, since_s, WatchConfig(min_new=min_new, every_s=every_s)) is expected


def test_watch_needs_a_trigger():
    with pytest.raises(ConfigError, match="every-n"):
        WatchConfig(min_new=None, every_s=None)


def test_a_watch_round_trains_on_what_arrived_and_publishes(tmp_path: Path):
    model_dir = make_model(tmp_path / "model")
    db = tmp_path / "t.db"
    collect(model_dir, db, groups=2, n=2, scores=[1.0, 0.0])
    cfg = RunConfig(
        train=TrainConfig(batch_trajectories=4, device="cpu", learning_rate=1e-3),
        gate=GateConfig(tasks=1, margin=1.0, format_margin=1.0, max_new_tokens=8),
        run_dir=str(tmp_path / "run"),
    )
    rounds = []
    with TrainingRun(db, cfg, base_model=model_dir, out=io.StringIO()) as run:
        assert run.pending() == 4
        done = watch(
            run,
            WatchConfig(min_new=4, poll_s=0.05, max_rounds=1),
            progress=False,
            on_round=rounds.append,
        )
        assert done == 1 and run.pending() == 0
        live = run.registry.live()
    assert len(rounds[0].steps) == 1
    assert live is not None and live.version == 1


@pytest.mark.parametrize("stop_signal", ["SIGINT", "SIGTERM"])
def test_train_watch_ends_on_a_signal_even_when_started_with_sigint_ignored(
    tmp_path: Path, stop_signal: str
):
    """A background job inherits SIGINT ignored and a process manager sends SIGTERM: either way
    `tepo-agent train --watch` must stop (exit 130), not keep running."""
    import signal
    import subprocess
    import sys

    model_dir = make_model(tmp_path / "model")
    db = tmp_path / "t.db"
    collect(model_dir, db, groups=1, n=2, scores=[1.0, 0.0])
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "train", "--db", str(db), "--model", str(model_dir),
         "--reward", "outcome", "--watch", "--every-n", "1000", "--poll-s", "0.1",
         "--run-dir", str(tmp_path / "run"), "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        seen = []
        for line in proc.stdout:  # the handlers are installed before this line is printed
            seen.append(line)
            if line.startswith("watching "):
                break
        else:
            pytest.fail(f"train --watch exited early: {''.join(seen)}")
        proc.send_signal(getattr(signal, stop_signal))
        output, _ = proc.communicate(timeout=60)
        output = "".join(seen) + output
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    assert "interrupted" in output
