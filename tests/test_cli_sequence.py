"""The guide's command sequence on a fresh database, as a user types it.

run -> feedback -> check-logprobs -> train -> run (now on v1) -> rollback -> run -> train (a child
of v0). Every trajectory names the version that sampled it; train follows the registry.
Random-weight default model (machinery only), gate off (it has no world to evaluate on).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tepo_agent.cli import main
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore

pytestmark = pytest.mark.slow

RUN = ["--samples", "2", "--max-new-tokens", "8", "--max-tool-calls", "1", "--device", "cpu"]
TRAIN = ["--steps", "1", "--batch", "2", "--lr", "1e-3", "--no-gate", "--device", "cpu"]


def _run(capsys: pytest.CaptureFixture[str], db: Path, *extra: str) -> list[dict]:
    assert main(["run", "What is 2+3?", "--db", str(db), *RUN, "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _score(capsys: pytest.CaptureFixture[str], db: Path, runs: list[dict]) -> None:
    for run, value in zip(runs, ("1.0", "0.0"), strict=True):
        # a unique prefix, as the guide shows ids
        _cli(capsys, "feedback", run["trajectory_id"][:12], value, "--db", str(db))


def test_guide_sequence_on_a_fresh_database(
    default_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "fresh.db"
    first = _run(capsys, db, "--model", str(default_model_dir))
    assert [r["policy_version"] for r in first] == [0, 0]  # the fresh DB registered it as v0
    _score(capsys, db, first)

    report = _cli(capsys, "check-logprobs", "--db", str(db))
    assert report.startswith("policy version 0: 2 trajectories")
    mean = float(report.split("mean ")[1].split(",")[0])
    assert mean < 1e-3

    out = _cli(capsys, "train", "--db", str(db), *TRAIN)
    assert "training from live policy v0" in out
    assert "published version 1 (live)" in out

    second = _run(capsys, db)  # no --model: the live version
    assert [r["policy_version"] for r in second] == [1, 1]
    assert _cli(capsys, "check-logprobs", "--db", str(db)).startswith("policy version 1: 2 ")
    assert _cli(capsys, "check-logprobs", "--db", str(db), "--policy", "0").startswith(
        "policy version 0: 2 "
    )

    with PolicyRegistry(db) as registry:
        v1_dir = registry.get(1).path
    named = _run(capsys, db, "--model", v1_dir)  # a registered directory is that version
    assert [r["policy_version"] for r in named] == [1, 1]

    assert "version 0 is live" in _cli(capsys, "rollback", "0", "--db", str(db))
    third = _run(capsys, db)
    assert [r["policy_version"] for r in third] == [0, 0]
    _score(capsys, db, third)
    out = _cli(capsys, "train", "--db", str(db), *TRAIN)
    assert "training from live policy v0; the registry moved on from v1" in out
    assert "published version 2 (live)" in out
    with PolicyRegistry(db) as registry:
        assert registry.get(2).parent == 0
        assert registry.get(1).parent == 0

    seeds = {r["seed"] for r in first + second + named + third}
    assert len(seeds) == 4  # a fresh seed per run, stored; the samples of a group share it
    with TrajectoryStore(db) as store:
        stored = store.get(third[1]["trajectory_id"])
    assert stored.metadata["seed"] == third[1]["seed"] and stored.metadata["sample"] == 1

    listed = _cli(capsys, "policies", "--db", str(db), "--json")
    table = [json.loads(line) for line in listed.splitlines()]
    assert [(r["version"], r["parent"], r["status"], r["trajectories"]) for r in table] == [
        (0, None, "retired", 4),
        (1, 0, "retired", 4),
        (2, 0, "live", 0),
    ]
