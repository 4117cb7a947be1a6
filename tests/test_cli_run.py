"""``tepo-agent run``: answers with the agent, stores the trajectories, prints their ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scripted_backend import tiny_model_dir

from tepo_agent.cli import main
from tepo_agent.store import TrajectoryStore

__all__ = ["tiny_model_dir"]  # fixtures


def test_run_stores_a_group_and_prints_it_as_json(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    argv = ["run", "What is 2+2?", "--model", str(tiny_model_dir), "--db", str(db)]
    argv += ["--max-new-tokens", "6", "--device", "cpu", "--samples", "2", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload) == 2
    assert payload[0]["group_id"] == payload[1]["group_id"] is not None
    with TrajectoryStore(db) as store:
        for item in payload:
            stored = store.get(item["trajectory_id"])
            assert stored.group_id == item["group_id"]
            assert stored.app_tag == "cli"
            assert len(stored.assistant_turns()[0].token_ids) <= 6


def test_run_prints_answer_status_and_trajectory_id(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    argv = ["run", "Hi", "--model", str(tiny_model_dir), "--db", str(db)]
    assert main([*argv, "--max-new-tokens", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "answer:" in out
    trajectory_id = out.split("trajectory: ")[1].split()[0]
    with TrajectoryStore(db) as store:
        assert store.get(trajectory_id).task == "Hi"


def test_unreachable_base_url_is_a_readable_error(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "Hi", "--model", str(tiny_model_dir), "--db", str(tmp_path / "x.db")]
    assert main([*argv, "--base-url", "http://127.0.0.1:9/v1"]) == 1
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9/v1/models" in err and "Traceback" not in err
