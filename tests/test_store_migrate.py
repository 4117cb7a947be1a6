"""``tepo-agent migrate``: a SQLite store copied into PostgreSQL and back, verified by counts and
field by field, and the copy goes on numbering where the original stopped."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import psycopg
import pytest
from test_store import make_trajectory

from tepo_agent.cli import main as cli_main
from tepo_agent.errors import StoreError
from tepo_agent.store import (
    EvaluationItemRecord,
    EvaluationRecord,
    ServedResponse,
    TrajectoryStore,
    open_store,
)
from tepo_agent.store.migrate import verify_copy


def fill(path: Path) -> list[str]:
    """A SQLite store with a row in every table; returns the trajectory ids."""
    with TrajectoryStore(path) as store:
        ids = store.add_many([make_trajectory(score=0.5, group_id="g1") for _ in range(3)])
        late = make_trajectory()
        store.add(late)
        store.record_feedback(late.id, 0.25, source="reviewer")
        store.record_feedback(late.id, 0.75)
        store.record_reward(ids[0], -1.5)
        store.record_train_step(1, {"loss": 0.125}, cursor_seq=3, policy_version=0)
        store.ensure_base_policy("/models/base", "full")
        v1 = store.register_policy("/ckpt/1", kind="lora", parent=0, metrics={"gate": {"a": 1}})
        store.promote_policy(v1)
        v2 = store.register_policy("/ckpt/2", kind="lora", parent=v1, metrics={})
        store.reject_policy(v2, "gate failed")
        items = [
            EvaluationItemRecord(f"task-{k}", 0, "math", k % 2 == 0, k / 4, "4", "done", k,
                                 [{"tool": "calculator", "ok": True}], v1, "exact")
            for k in (3, 1, 2)  # stored order differs from key order
        ]  # fmt: skip
        record = EvaluationRecord(v1, "gate", "math", 0, 3, 1, 0.0, "exact", {"n": 3}, {"acc": 0.5})
        store.save_evaluation(record, items)
        store.record_served([ServedResponse("resp-1", ids[1], "sess-1", "alice", 12.5)])
        return [*ids, late.id]


def test_sqlite_to_postgres_and_back_is_field_exact(
    tmp_path: Path, postgres_server, capsys
) -> None:
    original, back = tmp_path / "original.db", tmp_path / "back.db"
    ids = fill(original)
    url = postgres_server.new_database()

    assert cli_main(["migrate", "--from", str(original), "--to", url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"trajectories +4 rows copied, +4 compared equal", out)
    assert "every field equal" in out
    assert cli_main(["migrate", "--from", url, "--to", f"sqlite:///{back}", "--no-progress"]) == 0
    # The round trip: the file that came back equals the original in every field.
    compared = verify_copy(str(original), str(back))
    assert compared["trajectories"] == 4 and compared["turns"] == 16
    assert compared["evaluation_items"] == 3 and compared["policy_events"] >= 6

    with open_store(str(original)) as a, open_store(url) as b:
        for trajectory_id in ids:
            assert b.get(trajectory_id) == a.get(trajectory_id)
        assert b.feedback(ids[3]) == a.feedback(ids[3])
        assert b.policies() == a.policies() and b.policy_events() == a.policy_events()
        assert b.evaluation(1) == a.evaluation(1)  # items in their stored order
        assert b.train_steps() == a.train_steps()
        assert b.session_trajectories("sess-1") == a.session_trajectories("sess-1")
        assert [g.seq for g in b.scored_since(0)] == [g.seq for g in a.scored_since(0)]
        # The copy numbers on where the original stopped: seq, score_seq, ids, versions.
        extra_a, extra_b = make_trajectory(score=1.0), make_trajectory(score=1.0)
        a.add(extra_a)
        b.add(extra_b)
        newest = [s.list(newest_first=True, limit=1)[0].seq for s in (a, b)]
        assert newest[0] == newest[1] == 5
        assert b.get(extra_b.id) and b.scored_since(4)[-1].seq == a.scored_since(4)[-1].seq
        a.record_feedback(extra_a.id, 0.5)
        b.record_feedback(extra_b.id, 0.5)
        assert len(b.feedback(extra_b.id)) == 1
        assert b.register_policy("/ckpt/3", kind="lora", parent=1, metrics={}) == 3


def test_verify_finds_a_changed_byte_and_a_missing_row(tmp_path: Path, postgres_server) -> None:
    original = tmp_path / "original.db"
    fill(original)
    url = postgres_server.new_database()
    assert cli_main(["migrate", "--from", str(original), "--to", url, "--no-progress"]) == 0
    flip = (
        "UPDATE turns SET token_ids = set_byte(token_ids, 0, get_byte(token_ids, 0) # 1) "
        "WHERE idx = 0 AND trajectory_id = (SELECT min(trajectory_id) FROM turns)"
    )
    with psycopg.connect(url) as conn:
        conn.execute(flip)
    with pytest.raises(StoreError, match=r"turns row .*column token_ids differs"):
        verify_copy(str(original), url)
    with psycopg.connect(url) as conn:
        conn.execute(flip)  # xor twice: the byte is back
    assert verify_copy(str(original), url)["turns"] == 16
    with sqlite3.connect(original) as conn:
        conn.execute("DELETE FROM served_responses")
    with pytest.raises(StoreError, match="served_responses: 0 rows"):
        verify_copy(str(original), url)


def test_migrate_refuses_a_destination_that_holds_data(
    tmp_path: Path, postgres_server, capsys
) -> None:
    original = tmp_path / "original.db"
    fill(original)
    url = postgres_server.new_database()
    with open_store(url) as store:
        store.add(make_trajectory())
    assert cli_main(["migrate", "--from", str(original), "--to", url, "--no-progress"]) != 0
    assert "already holds data" in capsys.readouterr().err
    with open_store(url) as store:
        assert store.count() == 1
