"""The report's data from a real store: aggregates, the bounded sample, tolerance of old stores."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from _report_stores import STEP_METRICS, write_store

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.report import SampleFilter, collect, load_decoder
from tepo_agent.report.queries import error_kind, open_readonly, stamp
from tepo_agent.store import TrajectoryStore
from tepo_agent.store.schema import apply_migrations


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, default_model_dir: Path) -> tuple[Path, list]:
    path = tmp_path_factory.mktemp("report") / "s.db"
    return path, write_store(path, default_model_dir)


def test_error_kinds_come_from_the_error_text() -> None:
    assert error_kind(None) is None
    assert error_kind("error: malformed tool call (x)") == "malformed"
    assert error_kind("error: unknown tool 'a'") == "unknown_tool"
    assert error_kind("error: timed out after 5 s") == "timeout"
    assert error_kind("error: ZeroDivisionError: division by zero") == "tool_error"


def test_tool_statistics_count_every_call_by_tool_and_error_kind(store, default_model_dir):
    data = collect(store[0], SampleFilter(), load_decoder(default_model_dir))
    tools = {t["name"]: t for t in data["tools"]}
    assert set(tools) == {"calculator", "search", "lookup"}
    calc = tools["calculator"]
    assert calc["calls"] == 2
    assert calc["errors"] == {"malformed": 1}
    assert calc["mean_delta_entropy"] == pytest.approx((-0.5 + 0.25) / 2)
    assert calc["reducing_share"] == pytest.approx(0.5)
    assert calc["mean_latency_s"] == pytest.approx(0.001)
    assert tools["search"]["reducing_share"] == pytest.approx(1.0)
    assert tools["lookup"]["errors"] == {"unknown_tool": 1}
    assert tools["lookup"]["reducing_share"] is None  # no known ΔH


def test_versions_events_and_train_steps_are_all_there(store, default_model_dir):
    data = collect(store[0], SampleFilter(), load_decoder(default_model_dir))
    assert [(p["version"], p["status"]) for p in data["policies"]] == [
        (0, "retired"), (1, "live"), (2, "rejected")]  # fmt: skip
    assert data["policies"][1]["gate"] == {"accuracy": 0.625, "tasks": 8, "key": "k"}
    assert [(e["version"], e["event"]) for e in data["events"]] == [
        (0, "registered"), (0, "promoted"), (1, "registered"), (1, "gated"), (0, "retired"),
        (1, "promoted"), (2, "registered"), (2, "rejected")]  # fmt: skip
    steps = data["train"]["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for row, metrics in zip(steps, STEP_METRICS, strict=True):
        assert row["values"] == {k: v for k, v in metrics.items() if k != "loss"}
    assert [s["published_version"] for s in steps] == [None, None, 2]
    by_version = {v["version"]: v for v in data["versions"]}
    # runs 1-2 were sampled by v1 (scores 1, 0), runs 3-4 by v2 (score 1, unscored)
    assert by_version[1]["runs"] == 2 and by_version[1]["score"] == pytest.approx(0.5)
    assert by_version[2]["runs"] == 2 and by_version[2]["scored"] == 1
    assert data["evaluations"] == []  # no evaluations table in this store


def test_the_sample_is_bounded_filtered_and_carries_every_token(store, default_model_dir):
    path, ids = store
    decoder = load_decoder(default_model_dir)
    data = collect(path, SampleFilter(limit=2), decoder)
    assert [t["id"] for t in data["trajectories"]] == [ids[3], ids[2]]  # newest first
    assert data["meta"]["trajectories"] == 4 and data["meta"]["matching"] == 4
    calc = collect(path, SampleFilter(tool="calculator"), decoder)["trajectories"]
    assert {t["id"] for t in calc} == {ids[0], ids[1]}
    assert [t["id"] for t in collect(path, SampleFilter(min_score=1.0), decoder)["trajectories"]] \
        == [ids[2], ids[0]]  # fmt: skip
    assert collect(path, SampleFilter(group_id="g1", policy_version=1), decoder)["meta"][
        "matching"] == 2  # fmt: skip
    (one,) = collect(path, SampleFilter(trajectory_id=ids[0]), decoder)["trajectories"]
    with TrajectoryStore(path, create=False) as s:
        stored = s.get(ids[0])
    first = one["turns"][0]
    assert "".join(first["pieces"]) == stored.turns[0].text
    assert first["ent"] == pytest.approx(stored.turns[0].entropies, abs=1e-4)
    call = one["turns"][1]
    assert (call["name"], call["args"], call["result"], call["dh"]) == (
        "calculator", {"expression": "6*7"}, "42", pytest.approx(-0.5))  # fmt: skip
    with pytest.raises(StoreError, match="no trajectory"):
        collect(path, SampleFilter(trajectory_id="nope"), decoder)
    with pytest.raises(ConfigError):
        SampleFilter(limit=0)


def test_the_stamp_changes_when_the_store_does(store, tmp_path, default_model_dir):
    path = tmp_path / "copy.db"
    write_store(path, default_model_dir)
    with open_readonly(path) as conn:
        before = stamp(conn)
    with TrajectoryStore(path) as s:
        s.record_feedback(s.list(limit=1)[0].id, 0.5)
    with open_readonly(path) as conn:
        assert stamp(conn) != before


def test_an_older_store_without_events_and_a_store_with_evaluations_both_read(tmp_path):
    old = tmp_path / "v2.db"
    conn = sqlite3.connect(old, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    apply_migrations(conn, target=2)
    conn.execute("COMMIT")
    # an evaluations table as `tepo-agent eval` writes it (another schema step adds it)
    conn.execute(
        "CREATE TABLE evaluations (id INTEGER PRIMARY KEY, policy_version INTEGER, label TEXT, "
        "suite TEXT NOT NULL, seed INTEGER NOT NULL, n INTEGER NOT NULL, samples INTEGER, "
        "temperature REAL, entropy_kind TEXT, config TEXT, summary TEXT, created_at REAL)"
    )
    summary = {"accuracy": {"estimate": 0.5, "low": 0.25, "high": 0.75, "n": 8},
               "calls_per_run": 1.5, "format_error_rate": 0.125}  # fmt: skip
    conn.execute(
        "INSERT INTO evaluations VALUES (1, 3, 'gate', 'all', 7, 8, 1, 0.0, 'exact', '{}', ?, 1.0)",
        [json.dumps(summary)],
    )
    conn.close()
    data = collect(old, SampleFilter(), load_decoder(None, None))
    assert data["events"] == [] and data["trajectories"] == []
    (ev,) = data["evaluations"]
    assert (ev["version"], ev["label"], ev["accuracy"], ev["low"], ev["high"]) == (
        3, "gate", 0.5, 0.25, 0.75)  # fmt: skip
    assert ev["format_error_rate"] == 0.125
    with sqlite3.connect(old) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == 2
