"""``TrajectoryStore``: the SQLite implementation of :class:`~tepo_agent.store.protocol.Store`.

Trajectories, feedback, trainer steps, the policy registry, evaluations and served responses in
one SQLite file. Several application processes, the trainer and a user's ``sqlite3`` shell share
the file (WAL mode, see :mod:`tepo_agent.store.schema`); the connection and its retry rules are
in :mod:`tepo_agent.store._sqlite_conn`, the other table groups in the ``_sqlite_*`` modules.

Cursors. ``seq`` numbers trajectories in commit order. ``score_seq`` numbers them in the order
they *became scored* (at ``add`` if they carry a score, else at their first feedback); the trainer
polls ``scored_since(cursor)`` over ``score_seq``, so a production trajectory scored by feedback an
hour after it was written is still trained on. Both are assigned under the write lock, so a
reader that has seen cursor ``c`` never later finds a new row below ``c``.

Feedback rule: every ``record_feedback`` call is kept in the ``feedback`` table, and the
trajectory's ``score`` becomes the latest value (latest wins). A trajectory is queued for the
trainer once, when it is first scored; a later feedback changes the score the trainer reads if
it has not polled yet, and does not queue it a second time.

One ``TrajectoryStore`` is safe to share between threads (calls are serialised); each process
must open its own (a SQLite connection must not cross ``fork``).
"""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import StoreError
from tepo_agent.store._records import (
    trajectory_from_rows,
    trajectory_row,
    turn_row,
)
from tepo_agent.store._shared import SharedOps
from tepo_agent.store._sqlite_base import placeholders
from tepo_agent.store._sqlite_conn import SqliteConnection
from tepo_agent.store._sqlite_evaluations import EvaluationTables
from tepo_agent.store._sqlite_policies import PolicyTables
from tepo_agent.store._sqlite_report import ReportQueries
from tepo_agent.store._sqlite_served import ServedTables
from tepo_agent.trajectory import Trajectory


def default_db_path() -> Path:
    """``$TEPO_AGENT_DB`` if set (read now, not at import), else ``./tepo-agent.db``."""
    return Path(os.environ.get("TEPO_AGENT_DB") or "tepo-agent.db")


class TrajectoryStore(
    SqliteConnection, PolicyTables, EvaluationTables, ServedTables, ReportQueries, SharedOps
):
    """The SQLite trajectory store (see the module docstring for the concurrency rules).

    Args:
        path: The database file; created (and migrated) if missing unless ``create`` is False.
        busy_timeout_s: How long a write waits for other writers before giving up.
        create: Whether a missing file may be created (False for read-only tools like the CLI).
        read_only: Never write to the file, not even to migrate it (the report, the dashboard).
    """

    PLACEHOLDER = "?"

    def _read(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[dict[str, Any]]:
        return self.read(sql, params)

    def _since_seq(self, since_seq: int) -> tuple[str, builtins.list[Any]]:
        # Numbers are taken under the write lock: every committed row below one is visible.
        return "seq > ?", [since_seq]

    def _score_horizon(self) -> tuple[str, builtins.list[Any]]:
        return "", []

    def _execute(self, sql: str, params: Sequence[Any]) -> int:
        return int(self.write(lambda db: db.execute(sql, list(params)).rowcount))

    def _location(self) -> str:
        return str(self.path)

    # -- trajectories --------------------------------------------------------------------------

    def add(self, trajectory: Trajectory) -> str:
        """Store a trajectory and all its turns atomically; returns its id."""
        return self.add_many([trajectory])[0]

    def add_many(self, trajectories: Sequence[Trajectory]) -> list[str]:
        """Store several trajectories in ONE transaction.

        Add the n samples of a GRPO group this way, so that a polling trainer never sees half
        a group.
        """
        if not trajectories:
            return []
        ids = [t.id for t in trajectories]
        if len(set(ids)) != len(ids):
            raise StoreError("add_many got the same trajectory id twice; every run needs new_id()")
        # Encode outside the transaction: the write lock is held only for the inserts.
        now = time.time()
        rows = [trajectory_row(t, seq=0, score_seq=None, now=now) for t in trajectories]
        turns = [turn_row(t.id, i, turn) for t in trajectories for i, turn in enumerate(t.turns)]

        def insert(db: sqlite_utils.Database) -> None:
            placeholders = ",".join("?" * len(ids))
            taken = db.execute(
                f"SELECT id FROM trajectories WHERE id IN ({placeholders})", ids
            ).fetchall()
            if taken:
                raise StoreError(
                    f"trajectory {taken[0][0]} is already stored; ids are unique, so give each "
                    "run a new Trajectory (tepo_agent.trajectory.new_id())"
                )
            seq = _next(db, "seq")
            score_seq = _next(db, "score_seq")
            for row in rows:
                row["seq"] = seq
                seq += 1
                if row["score"] is not None:
                    row["score_seq"] = score_seq
                    score_seq += 1
            # Plain executemany on the hot path: sqlite-utils' insert_all re-inspects the table
            # on every call, which held the write lock ~40% longer.
            db.conn.executemany(
                _insert_sql("trajectories", rows[0]), [tuple(r.values()) for r in rows]
            )
            if turns:
                db.conn.executemany(
                    _insert_sql("turns", turns[0]), [tuple(r.values()) for r in turns]
                )

        self.write(insert)
        return ids

    def get(self, trajectory_id: str) -> Trajectory:
        """The stored trajectory, every field as written (float arrays at float32 precision)."""
        rows = self.read("SELECT * FROM trajectories WHERE id = ?", [trajectory_id])
        if not rows:
            raise StoreError(f"no trajectory with id {trajectory_id!r} in {self.path}")
        turns = self.read(
            "SELECT * FROM turns WHERE trajectory_id = ? ORDER BY idx", [trajectory_id]
        )
        return trajectory_from_rows(rows[0], turns)

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are stored."""
        wanted = builtins.list(dict.fromkeys(ids))
        found: set[str] = set()
        for i in range(0, len(wanted), 500):  # under SQLite's bound-parameter limit
            chunk = wanted[i : i + 500]
            sql = f"SELECT id FROM trajectories WHERE id IN ({placeholders(chunk)})"
            found |= {r["id"] for r in self.read(sql, chunk)}
        return found

    # -- scores --------------------------------------------------------------------------------

    def _apply_feedback(self, trajectory_id: str, value: float, source: str) -> None:
        """Keep a (checked) feedback row and set the score; the first takes a ``score_seq``."""

        def apply(db: sqlite_utils.Database) -> None:
            row = db.execute(
                "SELECT score_seq FROM trajectories WHERE id = ?", [trajectory_id]
            ).fetchone()
            if row is None:
                raise StoreError(
                    f"no trajectory with id {trajectory_id!r} in {self.path}; feedback must "
                    "name a stored trajectory (the id the agent returned)"
                )
            score_seq = row[0] if row[0] is not None else _next(db, "score_seq")
            db.table("feedback").insert(
                {
                    "trajectory_id": trajectory_id,
                    "source": source,
                    "value": value,
                    "created_at": time.time(),
                }
            )
            db.execute(
                "UPDATE trajectories SET score = ?, score_seq = ? WHERE id = ?",
                [value, score_seq, trajectory_id],
            )

        self.write(apply)


def _next(db: sqlite_utils.Database, column: str) -> int:
    """The next value of a cursor column (call under the write lock: max + 1 is then unique)."""
    value = db.execute(f"SELECT MAX({column}) FROM trajectories").fetchone()[0]
    return 1 if value is None else int(value) + 1


def _insert_sql(table: str, row: dict[str, Any]) -> str:
    """``INSERT`` for rows shaped like ``row`` (all rows built by one function: same key order)."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
