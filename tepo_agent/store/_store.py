"""``TrajectoryStore``: trajectories, feedback and trainer steps in one SQLite file.

Several application processes, the trainer and a user's ``sqlite3`` shell share the file (WAL
mode, see :mod:`tepo_agent.store.schema`). Every write runs in a ``BEGIN IMMEDIATE``
transaction, retried with exponential backoff while another process holds the write lock, so
"database is locked" never reaches the caller unless the lock stays held for longer than
``busy_timeout_s`` (then :class:`StoreError` says so).

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
import json
import math
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, TypeVar

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store._codec import dump_json, load_json
from tepo_agent.store._records import (
    SUMMARY_COLUMNS,
    TrainStep,
    TrajectoryGroup,
    TrajectorySummary,
    summary_from_row,
    trajectory_from_rows,
    trajectory_row,
    turn_row,
)
from tepo_agent.store.schema import SCHEMA_VERSION, apply_migrations, configure, schema_version
from tepo_agent.trajectory import Trajectory

T = TypeVar("T")

_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def default_db_path() -> Path:
    """``$TEPO_AGENT_DB`` if set (read now, not at import), else ``./tepo-agent.db``."""
    return Path(os.environ.get("TEPO_AGENT_DB") or "tepo-agent.db")


def _hint(exc: sqlite3.OperationalError) -> str:
    """What to check for the errors a full or read-only disk gives."""
    text = str(exc).lower()
    causes = ("full", "disk i/o", "readonly", "read-only", "unable to open")
    if any(cause in text for cause in causes):
        return (
            " (the filesystem holding the database may be full or read-only, or the file not "
            "writable: free space or fix the mount or permissions, then retry; nothing of this "
            "write was committed)"
        )
    return ""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


class TrajectoryStore:
    """The SQLite trajectory store (see the module docstring for the concurrency rules).

    Args:
        path: The database file; created (and migrated) if missing unless ``create`` is False.
        busy_timeout_s: How long a write waits for other writers before giving up.
        create: Whether a missing file may be created (False for read-only tools like the CLI).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0, create: bool = True
    ) -> None:
        if not busy_timeout_s > 0:
            raise ConfigError(f"busy_timeout_s must be > 0 seconds, got {busy_timeout_s}")
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        if not create and not self.path.exists():
            raise StoreError(
                f"no trajectory database at {self.path}; pass the right path (--db or "
                "$TEPO_AGENT_DB) or create one by running the agent"
            )
        self._lock = threading.RLock()
        try:
            # isolation_level=None: no implicit transactions; every write below opens its own
            # BEGIN IMMEDIATE, and sqlite-utils nests its helpers inside it as savepoints.
            self._conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout_s,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the trajectory database {self.path}: {exc}") from exc
        self.db = sqlite_utils.Database(self._conn, execute_plugins=False)
        try:
            self._retry(lambda: configure(self._conn, busy_timeout_s=self.busy_timeout_s))
            if schema_version(self._conn) != SCHEMA_VERSION:
                self.write(lambda db: apply_migrations(db.conn))
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        except BaseException:
            self._conn.close()
            raise

    # -- transactions --------------------------------------------------------------------------

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying with jittered exponential backoff while the file is busy."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"SQLite error on {self.path}: {exc}{_hint(exc)}") from exc
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{self.path} stayed locked by another process for more than "
                        f"{self.busy_timeout_s:g} s ({exc}); find the process holding a long "
                        "write transaction, or raise busy_timeout_s"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.1)

    def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction: all of it commits, or none.

        Retried from the start while another process holds the write lock, so ``fn`` must only
        touch the database (no other side effects). This is how other components sharing the
        file (the policy registry, the trainer) make their own atomic writes.
        """

        def attempt() -> T:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self.db)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

        with self._lock:
            self._check_open()
            try:
                return self._retry(attempt)
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"write rejected by the schema of {self.path}: {exc}") from exc

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts (retried while busy)."""
        with self._lock:
            self._check_open()
            return self._retry(lambda: list(self.db.query(sql, params)))

    def _check_open(self) -> None:
        if self._conn is None:
            raise StoreError(f"the store for {self.path} is closed; open a new TrajectoryStore")

    @property
    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._conn)

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

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one trajectory whose id starts with ``prefix`` (as ``git`` takes
        commit prefixes); an unknown or ambiguous prefix is a :class:`StoreError` that lists the
        candidates."""
        prefix = prefix.strip().lower()
        if not prefix or not all(c in "0123456789abcdef-" for c in prefix):
            raise StoreError(f"{prefix!r} is not a trajectory id (32 hex characters, or a prefix)")
        rows = self.read(
            "SELECT id FROM trajectories WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
            [prefix, prefix + "g"],
        )
        if len(rows) == 1:
            return str(rows[0]["id"])
        if not rows:
            raise StoreError(
                f"no trajectory with id {prefix!r} (or an id starting so) in {self.path}"
            )
        shown = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise StoreError(
            f"id prefix {prefix!r} is ambiguous in {self.path}: {shown}; give more of it"
        )

    def list(
        self,
        *,
        limit: int = 100,
        offset: int = 0,
        group_id: str | None = None,
        app_tag: str | None = None,
        since_seq: int | None = None,
        newest_first: bool = False,
    ) -> list[TrajectorySummary]:
        """Trajectory summaries in ``seq`` order (oldest first unless ``newest_first``)."""
        if limit < 0 or offset < 0:
            raise ConfigError(f"limit and offset must be >= 0, got limit={limit} offset={offset}")
        where, params = [], []
        for clause, value in (
            ("group_id = ?", group_id),
            ("app_tag = ?", app_tag),
            ("seq > ?", since_seq),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        sql = f"SELECT {SUMMARY_COLUMNS} FROM trajectories"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ? OFFSET ?"
        return [summary_from_row(r) for r in self.read(sql, [*params, limit, offset])]

    def count(self) -> int:
        return int(self.read("SELECT count(*) AS n FROM trajectories")[0]["n"])

    # -- scores --------------------------------------------------------------------------------

    def record_feedback(self, trajectory_id: str, value: float, source: str = "app") -> None:
        """Keep a feedback row and set the trajectory's score to ``value`` (latest wins)."""
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(
                f"feedback value must be a score in [0, 1], got {value}; map your application's "
                "signal (thumbs up/down, stars) onto [0, 1] first"
            )

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

    def feedback(self, trajectory_id: str) -> builtins.list[dict[str, Any]]:
        """Every feedback row of a trajectory, oldest first (source, value, created_at)."""
        return self.read(
            "SELECT source, value, created_at FROM feedback WHERE trajectory_id = ? ORDER BY id",
            [trajectory_id],
        )

    def record_reward(self, trajectory_id: str, reward: float) -> None:
        """Store the reward the trainer computed for a trajectory (for inspection)."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ConfigError(f"reward must be finite, got {reward}")

        def apply(db: sqlite_utils.Database) -> None:
            cur = db.execute(
                "UPDATE trajectories SET reward = ? WHERE id = ?", [reward, trajectory_id]
            )
            if cur.rowcount == 0:
                raise StoreError(f"no trajectory with id {trajectory_id!r} in {self.path}")

        self.write(apply)

    def scored_since(self, seq: int, *, limit: int | None = None) -> builtins.list[TrajectoryGroup]:
        """Scored trajectories with ``score_seq > seq``, grouped by ``group_id``.

        Groups come in the order of their first member; an ungrouped trajectory is a group of
        one. ``limit`` caps the number of trajectories, except that a run of consecutive members
        of one group is never cut (so an atomically added group stays whole). The returned
        trajectories are exactly those with ``seq < score_seq <= max(g.seq for g in groups)``:
        that maximum is the next cursor.
        """
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1 or None, got {limit}")
        base = "SELECT id, group_id, score_seq FROM trajectories WHERE score_seq > ?"
        if limit is None:
            keys = self.read(base + " ORDER BY score_seq", [seq])
        else:
            keys = self.read(base + " ORDER BY score_seq LIMIT ?", [seq, limit])
            if len(keys) == limit and keys[-1]["group_id"] is not None:
                for row in self.read(base + " ORDER BY score_seq", [keys[-1]["score_seq"]]):
                    if row["group_id"] != keys[-1]["group_id"]:
                        break
                    keys.append(row)
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in keys:
            key = row["group_id"] if row["group_id"] is not None else "\0" + row["id"]
            groups.setdefault(key, []).append(row)
        return [
            TrajectoryGroup(
                group_id=rows[0]["group_id"],
                members=[self.get(r["id"]) for r in rows],
                seq=max(r["score_seq"] for r in rows),
            )
            for rows in groups.values()
        ]

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
        row = {
            "step": int(step),
            "policy_version": policy_version,
            "published_version": published_version,
            "cursor_seq": int(cursor_seq),
            "metrics": dump_json(metrics),
            "created_at": time.time(),
        }

        def insert(db: sqlite_utils.Database) -> None:
            if db.execute("SELECT 1 FROM train_steps WHERE step = ?", [row["step"]]).fetchone():
                raise StoreError(f"train step {step} is already recorded; steps are unique")
            db.table("train_steps").insert(row)

        self.write(insert)

    def train_steps(self) -> builtins.list[TrainStep]:
        rows = self.read("SELECT * FROM train_steps ORDER BY step")
        return [TrainStep(**{**r, "metrics": load_json(r["metrics"]) or {}}) for r in rows]

    # -- export / lifecycle --------------------------------------------------------------------

    def export_jsonl(self, path_or_file: str | os.PathLike[str] | IO[str]) -> int:
        """Write every trajectory (with turns and token arrays) as one JSON line; returns count."""
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "w", encoding="utf-8") as fh:
                return self.export_jsonl(fh)
        count, after = 0, 0
        while True:
            batch = self.read(
                "SELECT id, seq, score_seq, reward FROM trajectories WHERE seq > ? "
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

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TrajectoryStore({str(self.path)!r})"


def _next(db: sqlite_utils.Database, column: str) -> int:
    """The next value of a cursor column (call under the write lock: max + 1 is then unique)."""
    value = db.execute(f"SELECT MAX({column}) FROM trajectories").fetchone()[0]
    return 1 if value is None else int(value) + 1


def _insert_sql(table: str, row: dict[str, Any]) -> str:
    """``INSERT`` for rows shaped like ``row`` (all rows built by one function: same key order)."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})"
