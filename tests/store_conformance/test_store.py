"""The trajectory store on every backend (the ``store`` fixture): round trips, feedback, the
trainer's scored_since cursor, train steps, export, and the feedback/trajectories CLI over a
store URL. Tests taking ``sqlite_store`` or building files by hand are SQLite-only: the BLOB
layout, the connection settings and the migration of old files."""

from __future__ import annotations

import io
import json
import math
import sqlite3
import struct
from pathlib import Path

import pytest
from _store_data import f32, make_trajectory

from tepo_agent.cli import main as cli_main
from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store import SCHEMA_VERSION, Store, TrajectoryStore, open_store
from tepo_agent.store.schema import apply_migrations, schema_version
from tepo_agent.trajectory import Trajectory


def test_every_field_round_trips_with_float32_arrays(store: Store) -> None:
    traj = make_trajectory(score=0.75)
    assert store.add(traj) == traj.id
    back = store.get(traj.id)
    assert back.prompt_token_ids == traj.prompt_token_ids
    for got, want in zip(back.turns, traj.turns, strict=True):
        assert got.token_ids == want.token_ids
        for name in ("logprobs", "entropies", "entropy_lower", "entropy_upper"):
            value = getattr(want, name)
            assert getattr(got, name) == (None if value is None else f32(value)), name
        for name in ("role", "text", "entropy_kind", "policy_version", "finish_reason",
                     "entropy_mean", "tool_call_id", "tool_name", "tool_args", "tool_result",
                     "tool_error", "tool_latency_s", "delta_entropy", "replica"):  # fmt: skip
            assert getattr(got, name) == getattr(want, name), name
    for name in ("task", "id", "group_id", "answer", "status", "score", "app_tag", "task_id",
                 "metadata", "created_at"):  # fmt: skip
        assert getattr(back, name) == getattr(traj, name), name
    assert back.full_token_ids() == traj.full_token_ids()


def test_empty_float_array_stays_distinct_from_none(store: Store) -> None:
    traj = make_trajectory()
    store.add(traj)
    last = store.get(traj.id).turns[3]
    assert last.logprobs == []
    assert last.entropy_lower is None


def test_token_arrays_are_little_endian_int32_and_float32_blobs(
    sqlite_store: TrajectoryStore, tmp_path: Path
) -> None:
    """SQLite-only: the BLOB layout in the file."""
    traj = make_trajectory()
    sqlite_store.add(traj)
    conn = sqlite3.connect(tmp_path / "t.db")
    ids, lps, kind = conn.execute(
        "SELECT token_ids, logprobs, typeof(entropies) FROM turns WHERE idx = 0"
    ).fetchone()
    assert kind == "blob"
    assert struct.unpack("<3i", ids) == (11, 12, 13)
    assert list(struct.unpack("<3f", lps)) == f32([-0.1, -2.5, -0.003])
    (prompt,) = conn.execute("SELECT prompt_token_ids FROM trajectories").fetchone()
    assert struct.unpack("<4i", prompt) == (1, 500, 70000, 2**31 - 1)
    conn.close()


def test_summary_counts_come_from_the_turns(store: Store) -> None:
    traj = make_trajectory()
    store.add(traj)
    (row,) = store.list()
    assert (row.num_turns, row.num_tool_calls, row.num_entropy_reducing_calls) == (4, 2, 1)
    assert row.num_tokens == 4 + 3 + 2 + 0 + 2
    assert row.policy_version == 7
    assert row.seq == 1 and row.score_seq is None


def test_add_many_of_nothing_writes_nothing(store: Store) -> None:
    assert store.add_many([]) == []
    assert store.count() == 0


def test_missing_created_at_is_filled_at_write_time(store: Store) -> None:
    traj = Trajectory(task="t", prompt_token_ids=[1])
    store.add(traj)
    assert traj.created_at is None
    assert store.get(traj.id).created_at is not None


def test_duplicate_id_is_refused_and_the_batch_rolls_back(store: Store) -> None:
    first = make_trajectory()
    store.add(first)
    fresh = make_trajectory()
    with pytest.raises(StoreError, match="already stored"):
        store.add_many([fresh, Trajectory(task="dup", prompt_token_ids=[], id=first.id)])
    assert store.count() == 1
    with pytest.raises(StoreError, match="no trajectory"):
        store.get(fresh.id)


def test_bad_values_are_refused_before_writing(store: Store) -> None:
    with pytest.raises(StoreError, match="int32"):
        store.add(Trajectory(task="t", prompt_token_ids=[2**31]))
    with pytest.raises(StoreError, match="finite"):
        store.add(Trajectory(task="t", prompt_token_ids=[1], score=math.nan))
    with pytest.raises(StoreError, match="JSON"):
        store.add(Trajectory(task="t", prompt_token_ids=[1], metadata={"x": object()}))
    assert store.count() == 0


def test_get_of_unknown_id_says_so(store: Store) -> None:
    with pytest.raises(StoreError, match="no trajectory with id 'nope'"):
        store.get("nope")


def test_list_filters_pages_and_orders(store: Store) -> None:
    trajs = [make_trajectory(group_id="g" if i % 2 else None) for i in range(6)]
    trajs[5].app_tag = "other"
    for t in trajs:
        store.add(t)
    assert [r.id for r in store.list()] == [t.id for t in trajs]
    assert [r.seq for r in store.list(limit=2, offset=1)] == [2, 3]
    assert [r.seq for r in store.list(group_id="g")] == [2, 4, 6]
    assert [r.seq for r in store.list(app_tag="other")] == [6]
    assert [r.seq for r in store.list(since_seq=4)] == [5, 6]
    assert [r.seq for r in store.list(limit=2, newest_first=True)] == [6, 5]
    with pytest.raises(ConfigError):
        store.list(limit=-1)


def test_connection_uses_wal_foreign_keys_and_normal_sync(sqlite_store: TrajectoryStore) -> None:
    """SQLite-only: the connection settings."""
    store = sqlite_store
    conn = store.db.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert store.schema_version == SCHEMA_VERSION


def test_feedback_is_kept_and_the_latest_sets_the_score(store: Store) -> None:
    traj = make_trajectory()
    store.add(traj)
    store.record_feedback(traj.id, 0.0, source="thumbs")
    store.record_feedback(traj.id, 1.0)
    assert store.get(traj.id).score == 1.0
    assert [(f["source"], f["value"]) for f in store.feedback(traj.id)] == [
        ("thumbs", 0.0),
        ("app", 1.0),
    ]
    assert store.list()[0].score_seq == 1  # queued once, at the first feedback


def test_feedback_rejects_out_of_range_values_and_unknown_ids(store: Store) -> None:
    traj = make_trajectory()
    store.add(traj)
    for bad in (1.5, -0.1, math.inf):
        with pytest.raises(ConfigError, match=r"\[0, 1\]"):
            store.record_feedback(traj.id, bad)
    with pytest.raises(StoreError, match="no trajectory"):
        store.record_feedback("missing", 1.0)
    assert store.feedback(traj.id) == []


def test_scored_since_groups_by_group_id_and_ungrouped_stand_alone(
    store: Store,
) -> None:
    a1, b1, a2, lone, unscored = (
        make_trajectory(group_id="A", score=1.0),
        make_trajectory(group_id="B", score=0.0),
        make_trajectory(group_id="A", score=0.5),
        make_trajectory(score=0.25),
        make_trajectory(group_id="A"),
    )
    for t in (a1, b1, a2, lone, unscored):
        store.add(t)
    groups = store.scored_since(0)
    assert [(g.group_id, [m.id for m in g.members], g.seq) for g in groups] == [
        ("A", [a1.id, a2.id], 3),
        ("B", [b1.id], 2),
        (None, [lone.id], 4),
    ]
    assert store.scored_since(4) == []
    lone2 = make_trajectory(score=1.0)
    store.add(lone2)
    assert [[m.id for m in g.members] for g in store.scored_since(4)] == [[lone2.id]]


def test_feedback_after_the_cursor_passed_still_reaches_the_trainer(
    store: Store,
) -> None:
    early = make_trajectory()  # written first, scored last
    store.add(early)
    store.add(make_trajectory(score=1.0))
    cursor = max(g.seq for g in store.scored_since(0))
    store.record_feedback(early.id, 0.5)
    (group,) = store.scored_since(cursor)
    assert group.members[0].id == early.id and group.members[0].score == 0.5


def test_scored_since_limit_never_cuts_an_atomically_added_group(
    store: Store,
) -> None:
    store.add(make_trajectory(score=1.0))
    group = [make_trajectory(group_id="G", score=s) for s in (0.0, 0.5, 1.0)]
    store.add_many(group)
    store.add(make_trajectory(score=1.0))
    first = store.scored_since(0, limit=2)
    assert [len(g) for g in first] == [1, 3]
    cursor = max(g.seq for g in first)
    assert cursor == 4
    assert [len(g) for g in store.scored_since(cursor, limit=2)] == [1]


def test_train_steps_are_recorded_in_order_and_unique(store: Store) -> None:
    store.record_train_step(2, {"loss": 0.5}, cursor_seq=40, policy_version=1, published_version=2)
    store.record_train_step(1, {"loss": 0.75}, cursor_seq=20, policy_version=1)
    steps = store.train_steps()
    assert [(s.step, s.cursor_seq, s.metrics) for s in steps] == [
        (1, 20, {"loss": 0.75}),
        (2, 40, {"loss": 0.5}),
    ]
    assert steps[1].published_version == 2
    with pytest.raises(StoreError, match="already recorded"):
        store.record_train_step(1, {}, cursor_seq=0, policy_version=None)


def test_record_reward_is_stored_on_the_summary(store: Store) -> None:
    traj = make_trajectory()
    store.add(traj)
    store.record_reward(traj.id, -0.25)
    assert store.list()[0].reward == -0.25
    with pytest.raises(StoreError):
        store.record_reward("missing", 1.0)


def test_export_jsonl_writes_one_full_record_per_line(store: Store, tmp_path: Path):
    trajs = [make_trajectory(score=0.5) for _ in range(3)]
    store.add_many(trajs)
    out = tmp_path / "out.jsonl"
    assert store.export_jsonl(out) == 3
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [t.id for t in trajs]
    assert records[0]["turns"][0]["token_ids"] == [11, 12, 13]
    assert [t["replica"] for t in records[0]["turns"]] == [
        "http://10.0.1.11:8000",
        None,
        None,
        None,
    ]
    assert records[0]["seq"] == 1 and records[0]["score"] == 0.5
    buf = io.StringIO()
    assert store.export_jsonl(buf) == 3
    assert buf.getvalue() == out.read_text()


def test_a_v1_file_is_migrated_forward_on_open(tmp_path: Path) -> None:
    """SQLite-only: a file of schema v1 (SQLite's migration list)."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    apply_migrations(conn, target=1)
    conn.execute("COMMIT")
    assert schema_version(conn) == 1
    # a v1 row, written the way v1 wrote it (no score_seq column existed)
    conn.execute(
        "INSERT INTO trajectories (id, seq, task, prompt_token_ids, status, score, num_turns, "
        "num_tokens, num_tool_calls, num_entropy_reducing_calls, created_at) "
        "VALUES ('old', 1, 'q', ?, 'ok', 0.5, 0, 2, 0, 0, 1.0)",
        [struct.pack("<2i", 5, 6)],
    )
    conn.close()
    with TrajectoryStore(path) as store:
        assert store.schema_version == SCHEMA_VERSION == 7
        assert store.get("old").prompt_token_ids == [5, 6]
        (group,) = store.scored_since(0)  # backfilled score_seq: visible to the trainer
        assert group.members[0].id == "old"
        store.record_train_step(1, {}, cursor_seq=group.seq, policy_version=0)
        new = make_trajectory(score=1.0)
        store.add(new)
        assert [g.members[0].id for g in store.scored_since(group.seq)] == [new.id]


def test_a_v2_file_gets_each_failed_calls_error_kind_back_filled(tmp_path: Path) -> None:
    """SQLite-only: a file of schema v2 (SQLite's migration list)."""
    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    apply_migrations(conn, target=2)
    conn.execute("COMMIT")
    conn.execute(
        "INSERT INTO trajectories (id, seq, task, prompt_token_ids, status, num_turns, "
        "num_tokens, num_tool_calls, num_entropy_reducing_calls, created_at) "
        "VALUES ('old', 1, 'q', ?, 'ok', 5, 1, 5, 0, 1.0)",
        [struct.pack("<i", 5)],
    )
    errors = [
        "error: malformed tool call (bad json). Call a tool as ...",
        "error: unknown tool 'teleport'; tools: calculator",
        "error: timed out after 3 s of wall time; the process was killed.",
        "error: division by zero",
        None,
    ]
    for idx, error in enumerate(errors):
        conn.execute(
            "INSERT INTO turns (trajectory_id, idx, role, text, token_ids, tool_error, "
            "tool_result) VALUES ('old', ?, 'tool', '', x'', ?, ?)",
            [idx, error, "4" if error is None else None],
        )
    conn.close()
    with TrajectoryStore(path) as store:
        kinds = [t.error_kind for t in store.get("old").turns]
    assert kinds == ["malformed", "unknown_tool", "timeout", "tool_error", None]


def test_error_kind_round_trips_and_is_exported(store: Store, tmp_path: Path) -> None:
    traj = make_trajectory()
    traj.turns[2].error_kind = "timeout"
    store.add(traj)
    assert [t.error_kind for t in store.get(traj.id).turns] == [None, None, "timeout", None]
    out = tmp_path / "out.jsonl"
    store.export_jsonl(out)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t["error_kind"] for t in record["turns"]] == [None, None, "timeout", None]


def test_the_store_refuses_an_error_kind_it_does_not_know(store: Store) -> None:
    traj = make_trajectory()
    traj.turns[2].error_kind = "gremlins"  # type: ignore[assignment]
    with pytest.raises(StoreError, match="rejected by the schema"):
        store.add(traj)
    assert store.count() == 0


def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    """SQLite-only: the version lives in the file's header."""
    path = tmp_path / "future.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(StoreError, match="upgrade tepo-agent"):
        TrajectoryStore(path)


def test_a_non_database_file_and_a_missing_file_are_reported(tmp_path: Path) -> None:
    """SQLite-only: files that are not stores."""
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite database"):
        TrajectoryStore(junk)
    with pytest.raises(StoreError, match="no trajectory database"):
        TrajectoryStore(tmp_path / "absent.db", create=False)
    assert not (tmp_path / "absent.db").exists()


def test_a_closed_store_refuses_calls(store_url: str) -> None:
    store = open_store(store_url)
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()


# -- CLI ---------------------------------------------------------------------------------------


def test_cli_feedback_list_show_export(store_url: str, tmp_path: Path, monkeypatch, capsys) -> None:
    db = store_url  # every --db takes a store URL
    traj = make_trajectory()
    with open_store(db) as store:
        store.add(traj)
    monkeypatch.setenv("TEPO_AGENT_DB", str(db))  # read at call time
    assert cli_main(["feedback", traj.id, "0.5", "--source", "reviewer"]) == 0
    assert cli_main(["trajectories", "list", "--json"]) == 0
    listed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["id"], r["score"]) for r in listed] == [(traj.id, 0.5)]

    assert cli_main(["trajectories", "show", traj.id]) == 0
    shown = capsys.readouterr().out
    assert "calculator" in shown and '"expression": "2+3*4"' in shown
    assert "ΔH=-0.500" in shown and "H=1.750" in shown and "policy=7" in shown
    assert "feedback: 0.5 from reviewer" in shown

    assert cli_main(["trajectories", "show", traj.id, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["turns"][1]["tool_result"] == "14" and record["feedback"][0]["value"] == 0.5

    out = tmp_path / "x.jsonl"
    assert cli_main(["trajectories", "export", "--out", str(out), "--db", str(db)]) == 0
    assert json.loads(out.read_text())["id"] == traj.id


def test_cli_reports_a_missing_database_without_creating_it(tmp_path: Path, capsys) -> None:
    """SQLite-only: a missing file is never created by a reading command."""
    db = tmp_path / "absent.db"
    assert cli_main(["trajectories", "list", "--db", str(db)]) == 1
    assert "no trajectory database" in capsys.readouterr().err
    assert not db.exists()
