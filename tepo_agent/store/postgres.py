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
import json
import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import IO, Any

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store._codec import dump_json, load_json
from tepo_agent.store._open import redact
from tepo_agent.store._pg_conn import PgConnection
from tepo_agent.store._pg_numbering import apply_feedback, insert_trajectories
from tepo_agent.store._pg_registry import PgPolicyOps
from tepo_agent.store._pg_side import PgSideOps
from tepo_agent.store._records import (
    SUMMARY_COLUMNS,
    TrainStep,
    TrajectoryGroup,
    TrajectorySummary,
    summary_from_row,
    trajectory_from_rows,
)
from tepo_agent.store._side_records import FeedbackRow, TrajectoryFilter
from tepo_agent.trajectory import Trajectory


class PostgresStore(PgConnection, PgPolicyOps, PgSideOps):
    """The PostgreSQL trajectory store (see the module docstring for the cursor's design).

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq's URL form, so
            ``?host=/run/postgresql`` reaches a unix socket); the schema is created or migrated
            on open.
        busy_timeout_s: How long an operation waits for locks held by other transactions.
        create: Whether a database without the store's tables may be given them (False: such
            a database is a :class:`StoreError`, as a missing file is for SQLite).
        read_only: Open without migrating and refuse every write (the report, the dashboard).
        max_connections: Connections this store opens at most (one per concurrent thread).
    """

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

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one trajectory whose id starts with ``prefix``."""
        prefix = prefix.strip().lower()
        if not prefix or not all(c in "0123456789abcdef-" for c in prefix):
            raise StoreError(f"{prefix!r} is not a trajectory id (32 hex characters, or a prefix)")
        rows = self._read(
            "SELECT id FROM trajectories WHERE id >= %s AND id < %s ORDER BY id LIMIT 6",
            [prefix, prefix + "g"],
        )
        if len(rows) == 1:
            return str(rows[0]["id"])
        where = redact(self.url)
        if not rows:
            raise StoreError(f"no trajectory with id {prefix!r} (or an id starting so) in {where}")
        shown = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise StoreError(f"id prefix {prefix!r} is ambiguous in {where}: {shown}; give more of it")

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are stored."""
        wanted = builtins.list(dict.fromkeys(ids))
        if not wanted:
            return set()
        rows = self._read("SELECT id FROM trajectories WHERE id = ANY(%s)", [wanted])
        return {r["id"] for r in rows}

    def _where(self, filters: TrajectoryFilter) -> tuple[str, builtins.list[Any]]:
        """The WHERE clause of ``filters``; ``since_seq`` is a cursor like ``scored_since``'s:
        it never selects a row while a lower ``seq`` may still commit."""
        where, params = [], []
        for clause, value in (
            ("group_id = %s", filters.group_id),
            ("app_tag = %s", filters.app_tag),
            ("id = %s", filters.trajectory_id),
            ("policy_version = %s", filters.policy_version),
            ("score >= %s", filters.min_score),
            ("score <= %s", filters.max_score),
            ("id IN (SELECT trajectory_id FROM turns WHERE role = 'tool' AND tool_name = %s)",
             filters.tool),
        ):  # fmt: skip
            if value is not None:
                where.append(clause)
                params.append(value)
        if filters.since_seq is not None:
            where.append("seq > %s AND seq <= %s")
            params += [filters.since_seq, self._settled("seq_numbers")]
        return (" WHERE " + " AND ".join(where) if where else ""), params

    def list(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        newest_first: bool = False,
        group_id: str | None = None,
        app_tag: str | None = None,
        since_seq: int | None = None,
        policy_version: int | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        tool: str | None = None,
        trajectory_id: str | None = None,
    ) -> builtins.list[TrajectorySummary]:
        """Trajectory summaries in ``seq`` order (oldest first unless ``newest_first``), of
        those every given filter selects."""
        if limit < 0 or offset < 0:
            raise ConfigError(f"limit and offset must be >= 0, got limit={limit} offset={offset}")
        where, params = self._where(
            TrajectoryFilter(group_id, app_tag, policy_version, min_score, max_score, tool,
                             since_seq, trajectory_id)
        )  # fmt: skip
        sql = f"SELECT {SUMMARY_COLUMNS} FROM trajectories{where}"
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT %s OFFSET %s"
        return [summary_from_row(r) for r in self._read(sql, [*params, limit, offset])]

    def count(
        self,
        *,
        group_id: str | None = None,
        app_tag: str | None = None,
        since_seq: int | None = None,
        policy_version: int | None = None,
        min_score: float | None = None,
        max_score: float | None = None,
        tool: str | None = None,
        trajectory_id: str | None = None,
    ) -> int:
        """How many trajectories the filters select (all of them without filters)."""
        where, params = self._where(
            TrajectoryFilter(group_id, app_tag, policy_version, min_score, max_score, tool,
                             since_seq, trajectory_id)
        )  # fmt: skip
        return int(self._read(f"SELECT count(*) AS n FROM trajectories{where}", params)[0]["n"])

    def newest_sampled_version(self) -> int | None:
        """The policy version of the newest trajectory that records one."""
        rows = self._read(
            "SELECT policy_version AS v FROM trajectories WHERE policy_version IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1"
        )
        return int(rows[0]["v"]) if rows else None

    # -- scores --------------------------------------------------------------------------------

    def record_feedback(self, trajectory_id: str, value: float, source: str = "app") -> None:
        """Keep a feedback row and set the trajectory's score to ``value`` (latest wins); the
        first feedback queues it for the trainer (takes a ``score_seq``)."""
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(
                f"feedback value must be a score in [0, 1], got {value}; map your application's "
                "signal (thumbs up/down, stars) onto [0, 1] first"
            )

        now = time.time()
        self._transaction(
            lambda conn: apply_feedback(conn, trajectory_id, value, source, now), pipeline=True
        )

    def feedback(self, trajectory_id: str) -> builtins.list[FeedbackRow]:
        """Every feedback row of a trajectory, oldest first (source, value, created_at)."""
        return self._read(  # type: ignore[return-value]
            "SELECT source, value, created_at FROM feedback WHERE trajectory_id = %s ORDER BY id",
            [trajectory_id],
        )

    def record_reward(self, trajectory_id: str, reward: float) -> None:
        """Store the reward the trainer computed for a trajectory (for inspection)."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ConfigError(f"reward must be finite, got {reward}")

        def apply(conn: Any) -> None:
            cur = conn.execute(
                "UPDATE trajectories SET reward = %s WHERE id = %s", [reward, trajectory_id]
            )
            if cur.rowcount == 0:
                raise StoreError(f"no trajectory with id {trajectory_id!r} in {redact(self.url)}")

        self._transaction(apply)

    def scored_since(self, seq: int, *, limit: int | None = None) -> builtins.list[TrajectoryGroup]:
        """Scored trajectories with ``score_seq > seq``, grouped by ``group_id``: the same
        contract as the SQLite store's, and never past a number that may still commit."""
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {limit}")
        horizon = self._settled("score_seq_numbers")
        base = (
            "SELECT id, group_id, score_seq FROM trajectories "
            "WHERE score_seq > %s AND score_seq <= %s ORDER BY score_seq"
        )
        if limit is None:
            keys = self._read(base, [seq, horizon])
        else:
            keys = self._read(base + " LIMIT %s", [seq, horizon, limit])
            if len(keys) == limit and keys[-1]["group_id"] is not None:
                for row in self._read(base, [keys[-1]["score_seq"], horizon]):
                    if row["group_id"] != keys[-1]["group_id"]:
                        break
                    keys.append(row)
        groups: dict[str, builtins.list[dict[str, Any]]] = {}
        for row in keys:
            key = row["group_id"] if row["group_id"] is not None else "\0" + row["id"]
            groups.setdefault(key, []).append(row)
        return [
            TrajectoryGroup(
                group_id=rows[0]["group_id"],
                members=[self.get(r["id"]) for r in rows],
                seq=max(int(r["score_seq"]) for r in rows),
            )
            for rows in groups.values()
        ]

    def count_scored_since(self, seq: int) -> int:
        """How many scored trajectories have ``score_seq > seq`` (the trainer's backlog)."""
        rows = self._read("SELECT count(*) AS n FROM trajectories WHERE score_seq > %s", [seq])
        return int(rows[0]["n"])

    # -- trainer steps -------------------------------------------------------------------------

    def record_train_step(
        self,
        step: int,
        metrics: dict[str, Any],
        *,
        cursor_seq: int,
        policy_version: int | None,
        published_version: int | None = None,
    ) -> None:
        """Record a trainer step: the ``score_seq`` cursor it consumed up to, and its metrics."""
        row = [int(step), policy_version, published_version, int(cursor_seq),
               dump_json(metrics), time.time()]  # fmt: skip

        def insert(conn: Any) -> None:
            cur = conn.execute(
                "INSERT INTO train_steps (step, policy_version, published_version, cursor_seq, "
                "metrics, created_at) VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (step) DO NOTHING",
                row,
            )
            if cur.rowcount == 0:
                raise StoreError(f"train step {step} is already recorded; steps are unique")

        self._transaction(insert)

    def train_steps(self) -> builtins.list[TrainStep]:
        rows = self._read("SELECT * FROM train_steps ORDER BY step")
        return [TrainStep(**{**r, "metrics": load_json(r["metrics"]) or {}}) for r in rows]

    # -- export / lifecycle --------------------------------------------------------------------

    def export_jsonl(self, path_or_file: str | os.PathLike[str] | IO[str]) -> int:
        """Write every trajectory (with turns and token arrays) as one JSON line; returns count."""
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "w", encoding="utf-8") as fh:
                return self.export_jsonl(fh)
        count, after = 0, 0
        while True:
            batch = self._read(
                "SELECT id, seq, score_seq, reward FROM trajectories WHERE seq > %s "
                "ORDER BY seq LIMIT 256",
                [after],
            )
            if not batch:
                return count
            for row in batch:
                record = asdict(self.get(row["id"]))
                record.update(seq=row["seq"], score_seq=row["score_seq"], reward=row["reward"])
                path_or_file.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
            after = batch[-1]["seq"]


def _blobs(row: dict[str, Any]) -> dict[str, Any]:
    """psycopg returns BYTEA as ``bytes`` already; memoryviews (binary cursors) become bytes."""
    return {k: bytes(v) if isinstance(v, memoryview) else v for k, v in row.items()}
