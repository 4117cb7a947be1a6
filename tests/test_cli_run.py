"""``tepo-agent run``: answers with the agent, stores the trajectories, prints their ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _scripted_backend import tiny_model_dir

from tepo_agent.agent.graph import AgentResult
from tepo_agent.cli import main
from tepo_agent.cli import run as cli_run
from tepo_agent.paths import resolve_model_dir
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn

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


def test_a_model_outside_the_registry_is_recorded_as_such(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "cli.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(tmp_path / "another-model"))
    argv = ["run", "Hi", "--model", str(tiny_model_dir), "--db", str(db), "--seed", "11"]
    assert main([*argv, "--max-new-tokens", "4", "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["policy_version"] is None and payload["seed"] == 11
    assert "is not a version of this database" in captured.err
    with TrajectoryStore(db) as store:
        stored = store.get(payload["trajectory_id"])
    assert stored.metadata["model"] == str(tiny_model_dir)
    assert all(t.policy_version is None for t in stored.assistant_turns())


def test_no_default_model_is_an_error_that_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a source tree without the shipped weights, and nothing built in the cache
    import tepo_agent.paths

    monkeypatch.setattr(tepo_agent.paths, "shipped_model_dir", lambda: tmp_path / "not-shipped")
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "home"))
    db = tmp_path / "new.db"
    assert main(["run", "Hi", "--db", str(db)]) == 1
    err = capsys.readouterr().err
    assert "tepo-agent bootstrap" in err and "--model random" in err
    assert not db.exists()  # never a new empty file


def test_random_weights_only_by_name_and_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "home"))
    with pytest.warns(UserWarning, match="random-weight default model"):
        path = resolve_model_dir("random")
    assert (path / "config.json").is_file()


def test_tool_calls_are_shown_once_and_malformed_ones_as_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrote = '<tool_call>\n{"name": calculator}\n</tool_call>'
    turns = [
        Turn("assistant", [1], text=wrote, policy_version=0),
        Turn("tool", [2], tool_call_id="bad", tool_error="error: malformed tool call (json)"),
        Turn("assistant", [3], text="<tool_call>\n{\"name\": \"search\"}\n</tool_call>"),
        Turn("tool", [4], tool_call_id="c1", tool_name="search", tool_args={},
             tool_error="error: unknown tool 'search'; tools: calculator"),
        Turn("assistant", [5], text="</tool_call>", policy_version=0),
    ]  # fmt: skip
    trajectory = Trajectory(task="q", prompt_token_ids=[0], turns=turns, metadata={"seed": 5})
    records = [
        {"tool_call_id": "bad", "name": None, "args": None, "result": None,
         "error": "error: malformed tool call (json)", "latency_s": 0.0, "delta_entropy": None},
        {"tool_call_id": "c1", "name": "search", "args": {}, "result": None,
         "error": "error: unknown tool 'search'; tools: calculator", "latency_s": 0.0,
         "delta_entropy": -0.25},
    ]  # fmt: skip
    result = AgentResult(
        answer="</tool_call>", status="no_answer", trajectory=trajectory, trajectory_id=None,
        tool_calls=records, turn_entropies=[1.0, 0.5, 0.25],  # type: ignore[arg-type]
    )  # fmt: skip
    cli_run._print(result, None)
    out = capsys.readouterr().out
    assert f"tool malformed call {wrote!r} -> error: malformed tool call (json)" in out
    assert "tool search({}) -> error: unknown tool 'search'; tools: calculator  ΔH=-0.250" in out
    assert "error: error:" not in out and "None(null)" not in out
    assert "status: no_answer" in out and "seed: 5" in out


def test_the_default_model_s_own_world_tools_are_offered_by_default(tmp_path: Path) -> None:
    from argparse import Namespace

    from tepo_agent.tools import build_index

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"id": "a", "title": "A", "text": "alpha"}) + "\n")
    (tmp_path / "model" / "world").mkdir(parents=True)
    build_index(corpus, tmp_path / "model" / "world" / "search.db")
    offered = cli_run._tools(Namespace(search_db=None), [tmp_path / "model"])
    assert sorted(t.name for t in offered) == ["calculator", "search"]
    plain = cli_run._tools(Namespace(search_db=None), [tmp_path / "elsewhere"])
    assert sorted(t.name for t in plain) == ["calculator", "python"]
