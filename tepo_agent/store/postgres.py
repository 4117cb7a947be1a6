"""``PostgresStore``: the trajectory store in PostgreSQL, shared by many hosts (psycopg 3).

The same operations and rules as the SQLite store (:mod:`tepo_agent.store._store`), for a fleet:
many application servers on many hosts write trajectories at once, a trainer elsewhere follows
the cursor. Concurrency is PostgreSQL's own: every operation is one transaction on a pooled
connection (:mod:`tepo_agent.store._pg_pool`), so one store is safe to share between threads and
every process opens its own. At most one live policy is enforced by a partial unique index;
token arrays are ``BYTEA`` holding the same bytes as SQLite's BLOBs; migrations are
:mod:`tepo_agent.store.pg_schema`.

The cursor, and why it never skips a row
----------------------------------------
``seq`` (write order) and ``score_seq`` (the order trajectories became scored, which the
trainer's cursor follows) come from PostgreSQL sequences. Sequence values are handed out outside
transactions, so they commit out of order: writer A takes ``score_seq`` 7 and is still inserting
when writer B takes 8 and commits. A reader that then returned 8 and moved its cursor to 8 would
never see 7. SQLite avoids this by numbering under its single write lock; here writers number
concurrently, and the reader waits for the numbers it is about to pass:

1. A writer takes ``pg_advisory_xact_lock_shared(NUMBERING_LOCK)`` before it takes numbers
   (``nextval`` inside its INSERT or feedback UPDATE) and holds it until it commits or rolls back
   (transaction-level advisory locks cannot be released early). Writers never block each other
   on it: the lock is shared. (For the instant of the numbering statement a writer also holds
   a session-level batch lock, so the members of one ``add_many`` get consecutive numbers.)
2. The reader (``scored_since``, ``list(since_seq=...)``) first reads the sequence's
   ``last_value`` H (non-transactional: it counts every number handed out so far), then takes
   and at once releases the lock in EXCLUSIVE mode. That waits exactly for the transactions
   that held the shared lock, which includes every writer that took a number <= H. Then it reads
   the committed rows with ``cursor < score_seq <= H``.
3. After the barrier every number <= H is committed (visible) or rolled back (a hole that will
   never fill), so returning rows up to H and moving the cursor to their maximum skips nothing.
   Numbers above H are left for the next poll.

The exclusive request queues writers that arrive while it waits (PostgreSQL grants locks in
order), so a poll delays new writers by at most the rest of the transactions already numbering:
a trajectory's write is one pipelined round trip (its numbers, its turns, the commit). A
writer that holds its transaction open for longer than ``busy_timeout_s`` makes the reader fail
with a :class:`StoreError` naming the cause rather than wait forever.
tests/test_store_postgres_cursor.py holds a writer's transaction open after it numbered while
another commits a higher number, and checks the reader returns both exactly once.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterable, Sequence
from typing import Any

from tepo_agent.errors import StoreError
from tepo_agent.store._open import redact
from tepo_agent.store._pg_conn import PgConnection
from tepo_agent.store._pg_numbering import apply_feedback, insert_trajectories
from tepo_agent.store._pg_registry import PgPolicyOps
from tepo_agent.store._pg_side import PgSideOps
from tepo_agent.store._records import (
    trajectory_from_rows,
)
from tepo_agent.store._shared import SharedOps
from tepo_agent.trajectory import Trajectory


class PostgresStore(PgConnection, PgPolicyOps, PgSideOps, SharedOps):
    """The PostgreSQL trajectory store (see the module docstring for the cursor's design).

    Opened as :class:`~tepo_agent.store._pg_conn.PgConnection` is, whose docstring describes
    the arguments: ``url`` (libpq's ``postgresql://`` URL), ``busy_timeout_s``, ``create``,
    ``read_only`` and ``max_connections``.
    """

    PLACEHOLDER = "%s"

    def _since_seq(self, since_seq: int) -> tuple[str, builtins.list[Any]]:
        """``since_seq`` is a cursor like ``scored_since``'s: it never selects a row while a
        lower ``seq`` may still commit."""
        return "seq > ? AND seq <= ?", [since_seq, self._settled("seq_numbers")]

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        return int(self._transaction(lambda conn: conn.execute(self._sql(sql), params).rowcount))

    def _location(self) -> str:
        return redact(self.url)

    def _score_horizon(self) -> tuple[str, builtins.list[Any]]:
        """``scored_since`` never passes a ``score_seq`` that may still commit."""
        return " AND score_seq <= ?", [self._settled("score_seq_numbers")]

    # -- trajectories --------------------------------------------------------------------------

    def add(self, trajectory: Trajectory) -> str:
        """Store a trajectory and all its turns atomically; returns its id."""
        return self.add_many([trajectory])[0]

    def add_many(self, trajectories: Sequence[Trajectory]) -> builtins.list[str]:
        """Store several trajectories (a GRPO group) in ONE transaction."""
        if not trajectories:
            return []
        ids = [t.id for t in trajectories]
        if len(set(ids)) != len(ids):
            raise StoreError("add_many got the same trajectory id twice; every run needs new_id()")
        now = time.time()
        self._transaction(lambda conn: insert_trajectories(conn, trajectories, now), pipeline=True)
        return ids

    def get(self, trajectory_id: str) -> Trajectory:
        """The stored trajectory, every field as written (float arrays at float32 precision)."""

        def read(conn: Any) -> Trajectory:
            # Turns are written with their trajectory and never change, so the two statements
            # need no common snapshot (and no BEGIN/COMMIT round trips).
            row = conn.execute(
                "SELECT * FROM trajectories WHERE id = %s", [trajectory_id]
            ).fetchone()
            if row is None:
                raise StoreError(f"no trajectory with id {trajectory_id!r} in {redact(self.url)}")
            turns = conn.execute(
                "SELECT * FROM turns WHERE trajectory_id = %s ORDER BY idx", [trajectory_id]
            ).fetchall()
            return trajectory_from_rows(_blobs(row), [_blobs(t) for t in turns])

        return self._transaction(read, atomic=False)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are stored."""
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return set()
        rows = self._read("SELECT id FROM trajectories WHERE id = ANY(%s)", [wanted])
        return {r["id"] for r in rows}

    # -- scores --------------------------------------------------------------------------------

    def _apply_feedback(self, trajectory_id: str, value: float, source: str) -> None:
        now = time.time()
        self._transaction(
            lambda conn: apply_feedback(conn, trajectory_id, value, source, now), pipeline=True
        )


def _blobs(row: dict[str, Any]) -> dict[str, Any]:
    """psycopg returns BYTEA as ``bytes`` already; memoryviews (binary cursors) become bytes."""
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
