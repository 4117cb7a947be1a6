"""The PostgreSQL store's cursor never skips a number that commits late (the design is in
tepo_agent/store/postgres.py): a writer holds its transaction open after taking a number while
another commits a higher one; the reader must return both, each exactly once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tepo_agent.store._pg_numbering import apply_feedback, insert_trajectories
from tepo_agent.store.postgres import PostgresStore
from tepo_agent.trajectory import Trajectory, Turn


def scored(name: str) -> Trajectory:
    return Trajectory(
        task=name,
        prompt_token_ids=[1, 2, 3],
        turns=[Turn(role="assistant", token_ids=[4, 5], text="x", logprobs=[-0.5, -0.25])],
        score=1.0,
    )


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    with PostgresStore(postgres_url, busy_timeout_s=10) as s:
        yield s


@pytest.fixture
def slow_writer(postgres_url: str) -> Iterator[Any]:
    """A raw connection playing writer A: the test decides when its transaction ends."""
    conn = psycopg.connect(postgres_url, row_factory=dict_row)
    yield conn
    conn.close()


class Reader(threading.Thread):
    """Calls ``scored_since(cursor)`` once in the background."""

    def __init__(self, store: PostgresStore, cursor: int) -> None:
        super().__init__(daemon=True)
        self.store, self.cursor = store, cursor
        self.groups: list[Any] | None = None

    def run(self) -> None:
        self.groups = self.store.scored_since(self.cursor)


def ids_and_cursor(groups: list[Any]) -> tuple[list[str], int | None]:
    ids = [m.id for g in groups for m in g.members]
    return ids, max((g.seq for g in groups), default=None)


def test_a_lower_number_committed_after_a_higher_one_is_not_skipped(
    store: PostgresStore, slow_writer: Any, postgres_url: str
) -> None:
    first, second = scored("A, slow"), scored("B, fast")
    # A takes score_seq 1 and holds its transaction open.
    insert_trajectories(slow_writer, [first], time.time())
    # B takes score_seq 2 and commits.
    store.add(second)
    # The hazard is real: a plain query sees only B's row, numbered above A's.
    with psycopg.connect(postgres_url, row_factory=dict_row) as naive:
        visible = naive.execute("SELECT id, score_seq FROM trajectories").fetchall()
    assert visible == [{"id": second.id, "score_seq": 2}]
    # The store's reader waits for A instead of moving its cursor past A's number.
    reader = Reader(store, 0)
    reader.start()
    reader.join(timeout=1.0)
    assert reader.is_alive(), "the reader returned while a lower number was still uncommitted"
    slow_writer.commit()
    reader.join(timeout=10)
    assert not reader.is_alive()
    ids, cursor = ids_and_cursor(reader.groups or [])
    assert ids == [first.id, second.id]
    assert cursor == 2
    assert store.scored_since(cursor) == []


def test_a_number_rolled_back_is_a_hole_the_cursor_passes(
    store: PostgresStore, slow_writer: Any
) -> None:
    dropped, kept = scored("A, rolled back"), scored("B")
    insert_trajectories(slow_writer, [dropped], time.time())
    store.add(kept)
    reader = Reader(store, 0)
    reader.start()
    reader.join(timeout=0.5)
    assert reader.is_alive()
    slow_writer.rollback()
    reader.join(timeout=10)
    ids, cursor = ids_and_cursor(reader.groups or [])
    assert ids == [kept.id]
    assert cursor == 2
    later = scored("C")
    store.add(later)
    assert ids_and_cursor(store.scored_since(cursor)) == ([later.id], 3)


def test_late_feedback_takes_a_number_under_the_same_rule(
    store: PostgresStore, slow_writer: Any
) -> None:
    unscored = Trajectory(task="feedback later", prompt_token_ids=[1], turns=[])
    store.add(unscored)
    # A gives the first feedback (the store's own statements) and stays open.
    apply_feedback(slow_writer, unscored.id, 1.0, "app", time.time())
    fast = scored("scored at add")
    store.add(fast)
    reader = Reader(store, 0)
    reader.start()
    reader.join(timeout=0.5)
    assert reader.is_alive()
    slow_writer.commit()
    reader.join(timeout=10)
    assert ids_and_cursor(reader.groups or []) == ([unscored.id, fast.id], 2)


def test_a_writer_stuck_open_makes_the_reader_fail_with_the_cause(
    postgres_url: str, slow_writer: Any
) -> None:
    from tepo_agent.errors import StoreError

    with PostgresStore(postgres_url, busy_timeout_s=0.5) as impatient:
        insert_trajectories(slow_writer, [scored("stuck")], time.time())
        with pytest.raises(StoreError, match="long transaction"):
            impatient.scored_since(0)
    slow_writer.rollback()
