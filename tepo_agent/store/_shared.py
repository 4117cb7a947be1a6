"""What both trajectory stores (SQLite and PostgreSQL) do the same way, written once.

A backend mixes :class:`SharedOps` in and supplies: ``_read(sql, params)`` (one query, rows as
dicts), ``PLACEHOLDER`` (``?`` for SQLite, ``%s`` for psycopg; the SQL here is written with
``?`` and translated by :meth:`SharedOps._sql`), the two cursor bounds, which differ
(``_since_seq`` and ``_score_horizon``: SQLite numbers under its write lock, PostgreSQL must
also stop below numbers that may still commit, see :mod:`tepo_agent.store.postgres`), the
transactions behind the checked writes (``_apply_feedback``; ``_execute``, one statement) and
``_location()`` for messages. What truly differs between the two (transactions, locking, the
served upsert, numbering, the schema, the report's SQL) stays in the backends.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import IO, Any, ClassVar

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store._codec import dump_json, load_json
from tepo_agent.store._records import (
    SUMMARY_COLUMNS,
    TrainStep,
    TrajectoryGroup,
    TrajectorySummary,
    summary_from_row,
)
from tepo_agent.store._side_records import FeedbackRow, SessionTrajectory, TrajectoryFilter
from tepo_agent.trajectory import Trajectory

Rows = builtins.list[dict[str, Any]]

_TRAIN_STEP_COLUMNS = (
    "step", "policy_version", "published_version", "cursor_seq", "metrics", "created_at"
)  # fmt: skip

# (clause, TrajectoryFilter field) for every filter but the ``since_seq`` cursor.
_FILTER_CLAUSES = (
    ("group_id = ?", "group_id"),
    ("app_tag = ?", "app_tag"),
    ("id = ?", "trajectory_id"),
    ("policy_version = ?", "policy_version"),
    ("score >= ?", "min_score"),
    ("score <= ?", "max_score"),
    ("id IN (SELECT trajectory_id FROM turns WHERE role = 'tool' AND tool_name = ?)", "tool"),
)


class SharedOps:
    """Trajectory listing and counting, the cursor reads, feedback and rewards (checked), trainer
    steps, the JSONL export and the served-response lookups of
    :class:`~tepo_agent.store.protocol.Store`, for either backend."""

    PLACEHOLDER: ClassVar[str]
    _read: Callable[..., Rows]
    get: Callable[[str], Trajectory]
    # The clause (written with ``?``) and parameters that select ``seq > since_seq``.
    _since_seq: Callable[[int], tuple[str, builtins.list[Any]]]
    # The backend's transactions behind the checked writes below.
    _apply_feedback: Callable[[str, float, str], None]
    # One write statement (``?`` placeholders) in its own transaction; how many rows it changed.
    _execute: Callable[[str, Sequence[Any]], int]
    # Where the store is, for messages (the file, the URL without its password).
    _location: Callable[[], str]
    # The clause appended to ``score_seq > ?`` (with its parameters) that keeps ``scored_since``
    # below numbers that may still commit (empty where numbering is serialised).
    _score_horizon: Callable[[], tuple[str, builtins.list[Any]]]

    def _sql(self, sql: str) -> str:
        """``sql`` written with ``?`` placeholders, in this backend's placeholder style."""
        return sql if self.PLACEHOLDER == "?" else sql.replace("?", self.PLACEHOLDER)

    def _select(self, sql: str, params: builtins.list[Any] | None = None) -> Rows:
        return self._read(self._sql(sql), params or [])

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one trajectory whose id starts with ``prefix`` (as ``git`` takes
        commit prefixes); an unknown or ambiguous prefix is a :class:`StoreError` that lists the
        candidates."""
        prefix = prefix.strip().lower()
        if not prefix or not all(c in "0123456789abcdef-" for c in prefix):
            raise StoreError(f"{prefix!r} is not a trajectory id (32 hex characters, or a prefix)")
        rows = self._select(
            "SELECT id FROM trajectories WHERE id >= ? AND id < ? ORDER BY id LIMIT 6",
            [prefix, prefix + "g"],
        )
        if len(rows) == 1:
            return str(rows[0]["id"])
        where = self._location()
        if not rows:
            raise StoreError(f"no trajectory with id {prefix!r} (or an id starting so) in {where}")
        shown = ", ".join(r["id"] for r in rows[:5]) + (", ..." if len(rows) > 5 else "")
        raise StoreError(f"id prefix {prefix!r} is ambiguous in {where}: {shown}; give more of it")

    def _where(self, f: TrajectoryFilter) -> tuple[str, builtins.list[Any]]:
        """The ``WHERE`` clause (with its leading space, or empty) selecting what ``f`` selects."""
        where, params = [], []
        for clause, field in _FILTER_CLAUSES:
            value = getattr(f, field)
            if value is not None:
                where.append(clause)
                params.append(value)
        if f.since_seq is not None:
            clause, values = self._since_seq(f.since_seq)
            where.append(clause)
            params += values
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
        """Trajectory summaries in ``seq`` order (oldest first unless ``newest_first``), those
        every given filter selects (see :class:`~tepo_agent.store.TrajectoryFilter`)."""
        if limit < 0 or offset < 0:
            raise ConfigError(f"limit and offset must be >= 0, got limit={limit} offset={offset}")
        where, params = self._where(
            TrajectoryFilter(group_id=group_id, app_tag=app_tag, policy_version=policy_version,
                             min_score=min_score, max_score=max_score, tool=tool,
                             since_seq=since_seq, trajectory_id=trajectory_id)
        )  # fmt: skip
        sql = f"SELECT {SUMMARY_COLUMNS} FROM trajectories{where}"
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ? OFFSET ?"
        return [summary_from_row(r) for r in self._select(sql, [*params, limit, offset])]

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
            TrajectoryFilter(group_id=group_id, app_tag=app_tag, policy_version=policy_version,
                             min_score=min_score, max_score=max_score, tool=tool,
                             since_seq=since_seq, trajectory_id=trajectory_id)
        )  # fmt: skip
        return int(self._select(f"SELECT count(*) AS n FROM trajectories{where}", params)[0]["n"])

    def newest_sampled_version(self) -> int | None:
        """The policy version of the newest trajectory that records one."""
        rows = self._select(
            "SELECT policy_version AS v FROM trajectories WHERE policy_version IS NOT NULL "
            "ORDER BY seq DESC LIMIT 1"
        )
        return int(rows[0]["v"]) if rows else None

    def feedback(self, trajectory_id: str) -> builtins.list[FeedbackRow]:
        """Every feedback row of a trajectory, oldest first (source, value, created_at)."""
        rows = self._select(
            "SELECT source, value, created_at FROM feedback WHERE trajectory_id = ? ORDER BY id",
            [trajectory_id],
        )
        return [FeedbackRow(source=r["source"], value=r["value"], created_at=r["created_at"])
                for r in rows]  # fmt: skip

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
        horizon, bound = self._score_horizon()
        base = f"SELECT id, group_id, score_seq FROM trajectories WHERE score_seq > ?{horizon}"
        base += " ORDER BY score_seq"
        if limit is None:
            keys = self._select(base, [seq, *bound])
        else:
            keys = self._select(base + " LIMIT ?", [seq, *bound, limit])
            if len(keys) == limit and keys[-1]["group_id"] is not None:
                for row in self._select(base, [keys[-1]["score_seq"], *bound]):
                    if row["group_id"] != keys[-1]["group_id"]:
                        break
                    keys.append(row)
        groups: dict[str, Rows] = {}
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

    def record_feedback(self, trajectory_id: str, value: float, source: str = "app") -> None:
        """Keep a feedback row and set the trajectory's score to ``value`` (latest wins); the
        first feedback queues it for the trainer (takes a ``score_seq``)."""
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ConfigError(
                f"feedback value must be a score in [0, 1], got {value}; map your application's "
                "signal (thumbs up/down, stars) onto [0, 1] first"
            )
        self._apply_feedback(trajectory_id, value, source)

    def record_reward(self, trajectory_id: str, reward: float) -> None:
        """Store the reward the trainer computed for a trajectory (for inspection)."""
        reward = float(reward)
        if not math.isfinite(reward):
            raise ConfigError(f"reward must be finite, got {reward}")
        changed = self._execute(
            "UPDATE trajectories SET reward = ? WHERE id = ?", [reward, trajectory_id]
        )
        if changed == 0:
            raise StoreError(f"no trajectory with id {trajectory_id!r} in {self._location()}")

    def count_scored_since(self, seq: int) -> int:
        """How many scored trajectories have ``score_seq > seq`` (the trainer's backlog)."""
        rows = self._select("SELECT count(*) AS n FROM trajectories WHERE score_seq > ?", [seq])
        return int(rows[0]["n"])

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
        values = (int(step), policy_version, published_version, int(cursor_seq),
                  dump_json(metrics), time.time())  # fmt: skip
        changed = self._execute(
            f"INSERT INTO train_steps ({', '.join(_TRAIN_STEP_COLUMNS)}) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (step) DO NOTHING",
            values,
        )
        if changed == 0:
            raise StoreError(f"train step {step} is already recorded; steps are unique")

    def train_steps(self) -> builtins.list[TrainStep]:
        rows = self._select("SELECT * FROM train_steps ORDER BY step")
        return [TrainStep(**{**r, "metrics": load_json(r["metrics"]) or {}}) for r in rows]

    def export_jsonl(self, path_or_file: str | os.PathLike[str] | IO[str]) -> int:
        """Write every trajectory (with turns and token arrays) as one JSON line; returns count."""
        if isinstance(path_or_file, (str, os.PathLike)):
            with open(path_or_file, "w", encoding="utf-8") as fh:
                return self.export_jsonl(fh)
        count, after = 0, 0
        while True:
            batch = self._select(
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

    # -- served responses (what ``tepo-agent serve --record`` maps) ----------------------------

    def served_trajectory_ids(
        self,
        *,
        response_id: str | None = None,
        trajectory_id: str | None = None,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> set[str]:
        keys = [
            (column, value)
            for column, value in (
                ("response_id", response_id),
                ("trajectory_id", trajectory_id),
                ("session_id", session_id),
            )
            if value is not None
        ]
        if len(keys) != 1:
            raise ConfigError(
                "name exactly one of response_id, trajectory_id or session_id, got "
                f"{[c for c, _ in keys] or 'none'}"
            )
        column, value = keys[0]
        sql = f"SELECT DISTINCT trajectory_id AS id FROM served_responses WHERE {column} = ?"
        params = [value]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        return {r["id"] for r in self._select(sql, params)}

    def session_trajectories(
        self, session_id: str, owner: str | None = None
    ) -> builtins.list[SessionTrajectory]:
        sql = (
            "SELECT t.id, t.status, t.score, t.policy_version, t.num_turns, t.num_tool_calls, "
            "t.metadata FROM trajectories t WHERE t.id IN (SELECT trajectory_id FROM "
            "served_responses WHERE session_id = ?"
            + ("" if owner is None else " AND owner = ?")
            + ") ORDER BY t.seq"
        )
        out = []
        for row in self._select(sql, [session_id] if owner is None else [session_id, owner]):
            meta = load_json(row.pop("metadata")) or {}
            out.append(
                SessionTrajectory(
                    **row,
                    started=meta.get("started"),
                    ended=meta.get("ended"),
                    response_ids=builtins.list(meta.get("response_ids") or []),
                )
            )
        return out
