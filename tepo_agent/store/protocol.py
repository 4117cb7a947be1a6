"""The store protocol: every operation the runtime, the registry, the trainer, the report and the
recorder need from a trajectory store, with no SQL and no database types in it.

Two implementations, chosen by the URL (:func:`tepo_agent.store.open_store`):

- :class:`tepo_agent.store.TrajectoryStore`: one SQLite file (a path or ``sqlite:///path``);
- ``tepo_agent.store.postgres.PostgresStore``: PostgreSQL through psycopg 3
  (``postgresql://...``).

The contract every implementation keeps (the conformance suite, ``tests/store_conformance``,
runs the same tests against each):

1. **Each operation is atomic on its own.** There is no ``transaction()``: a method either does
   all it says or nothing, and concurrent callers in other processes see it whole or not at
   all. What needs several rows changed together is one method (``add_many`` of a GRPO group,
   ``promote_policy`` retiring the old live version and writing both history rows,
   ``save_evaluation`` with its items, ``record_feedback`` with its ``score_seq``).
2. **Errors.** A missing trajectory, a duplicate id or a schema the code does not know is a
   :class:`~tepo_agent.errors.StoreError`; a bad argument (a score outside [0, 1], a negative
   limit) a :class:`~tepo_agent.errors.ConfigError`; a refused registry transition a
   :class:`~tepo_agent.errors.PublishError` with the words of
   :mod:`tepo_agent.store._policy` (shared by every backend). "Busy" is retried inside the
   store, never raised while the wait stays under the store's timeout.
3. **Cursors.** ``seq`` numbers trajectories in write order, unique and increasing.
   ``score_seq`` numbers them in the order they became scored (at ``add`` when they carry a
   score, else at their first ``record_feedback``); it is set once and never changes. The
   trainer polls ``scored_since(cursor)``. The rule a backend must guarantee: **once a reader
   has seen a trajectory with ``score_seq = c``, no trajectory with ``score_seq <= c`` appears
   later.** SQLite gets it from its single writer (numbers are taken under the write lock);
   a backend whose sequence values can commit out of order must hide rows above a gap until
   the gap commits (or is known to be abandoned) -- see the PostgreSQL module for how.
4. **Feedback.** Every ``record_feedback`` call is kept (``feedback``); the trajectory's score
   becomes the latest value. A trajectory enters the trainer's queue once, at its first score.
5. **Values.** Token ids come back exactly; logprobs and entropies at float32 precision
   (:mod:`tepo_agent.store._codec` defines the compact binary layout both backends store);
   ``None`` and ``[]`` stay distinct. JSON fields (metadata, tool arguments, metrics, detail)
   come back as the same JSON value.
6. **Policies.** At most one live policy, enforced by the database itself (a unique index),
   not only by the code; version numbers are ``max + 1`` taken atomically.
7. **Migrations.** Each backend has one ordered list of migrations; opening a store applies the
   missing ones exactly once even with several processes opening it at the same time, and
   refuses a database written by a newer tepo-agent. ``schema_version`` is the same number on
   every backend for the same set of tables.
8. **Sharing.** One store object is safe to share between the threads of one process; each
   process opens its own (a connection must not cross ``fork``).

Reading the report's aggregates (``version_stats``, ``tool_stats``, ``count``) is done by the
database, never by pulling rows into Python: a store holds 100k trajectories and more.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable, Sequence
from typing import IO, Any, Protocol, runtime_checkable

from tepo_agent.store._policy import PolicyEvent, PolicyKind, PolicyRecord
from tepo_agent.store._records import TrainStep, TrajectoryGroup, TrajectorySummary
from tepo_agent.store._side_records import (
    EvaluationItemRecord,
    EvaluationRecord,
    FeedbackRow,
    ServedResponse,
    SessionTrajectory,
    ToolStats,
    VersionStats,
)
from tepo_agent.trajectory import Trajectory


class TrajectoryOps(Protocol):
    """Trajectories, their scores, the trainer's cursor, train steps and the JSONL export."""

    def add(self, trajectory: Trajectory) -> str:
        """Store a trajectory with all its turns; returns its id. A stored id is a StoreError."""
        ...

    def add_many(self, trajectories: Sequence[Trajectory]) -> builtins.list[str]:
        """Store several trajectories at once (a GRPO group: a reader never sees half of it);
        they get consecutive ``seq`` (and ``score_seq`` for those carrying a score)."""
        ...

    def get(self, trajectory_id: str) -> Trajectory:
        """The stored trajectory, every field as written; StoreError if there is none."""
        ...

    def resolve_id(self, prefix: str) -> str:
        """The full id of the one trajectory whose id starts with ``prefix``; StoreError naming
        the candidates when none or several do."""
        ...

    def existing_ids(self, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` that are stored."""
        ...

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
        """Summaries (no turns) in ``seq`` order, filtered (see :class:`TrajectoryFilter`:
        every filter given must hold; ``tool`` keeps trajectories with a call to that tool)."""
        ...

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
        ...

    def newest_sampled_version(self) -> int | None:
        """The policy version of the newest trajectory that records one (None: no such)."""
        ...

    def record_feedback(self, trajectory_id: str, value: float, source: str = "app") -> None:
        """Keep a feedback row and set the score to ``value`` in [0, 1] (latest wins); the first
        score gives the trajectory its ``score_seq``."""
        ...

    def feedback(self, trajectory_id: str) -> builtins.list[FeedbackRow]:
        """Every feedback of a trajectory, oldest first."""
        ...

    def record_reward(self, trajectory_id: str, reward: float) -> None:
        """Store the reward the trainer computed (for inspection)."""
        ...

    def scored_since(self, seq: int, *, limit: int | None = None) -> builtins.list[TrajectoryGroup]:
        """Scored trajectories with ``score_seq > seq``, grouped by ``group_id`` in order of
        their first member; ``limit`` caps the trajectories but never cuts a run of one group.
        ``max(g.seq for g in groups)`` is the next cursor (contract point 3)."""
        ...

    def count_scored_since(self, seq: int) -> int:
        """How many scored trajectories have ``score_seq > seq`` (the trainer's backlog)."""
        ...

    def record_train_step(
        self,
        step: int,
        metrics: dict[str, Any],
        *,
        cursor_seq: int,
        policy_version: int | None,
        published_version: int | None = None,
    ) -> None:
        """Record a trainer step (unique ``step``): the cursor it consumed up to, its metrics."""
        ...

    def train_steps(self) -> builtins.list[TrainStep]:
        """Every recorded trainer step, by step."""
        ...

    def export_jsonl(self, path_or_file: str | os.PathLike[str] | IO[str]) -> int:
        """Write every trajectory (turns, token arrays, ``seq``, ``score_seq``, ``reward``) as
        one JSON line, in ``seq`` order; returns the count."""
        ...


class PolicyOps(Protocol):
    """The policy registry's table and history; each write is one atomic operation that checks
    the transition (:mod:`tepo_agent.store._policy`) and appends its history rows with it."""

    def live_policy(self) -> PolicyRecord | None:
        """The live version (None: none is live)."""
        ...

    def policy(self, version: int) -> PolicyRecord | None:
        """One version (None: not registered)."""
        ...

    def policies(self) -> builtins.list[PolicyRecord]:
        """Every version, oldest first."""
        ...

    def policy_events(self, version: int | None = None) -> builtins.list[PolicyEvent]:
        """The recorded history, oldest first (of one version, or of all)."""
        ...

    def ensure_base_policy(self, path: str, kind: PolicyKind) -> None:
        """Register ``path`` as version 0, live if nothing is; a no-op if version 0 is ``path``,
        PublishError if it is another path."""
        ...

    def register_policy(
        self, path: str, *, kind: PolicyKind, parent: int | None, metrics: dict[str, Any]
    ) -> int:
        """Add a candidate as version ``max + 1`` (at least 1); PublishError if ``parent`` is not
        registered. Writes ``registered`` (and ``gated`` when ``metrics["gate"]`` is a dict)."""
        ...

    def promote_policy(self, version: int) -> None:
        """Make a candidate live, retiring the live one; a no-op if it is live already."""
        ...

    def rollback_policy(self, version: int) -> None:
        """Make a retired version live again, retiring the live one; a no-op if it is live."""
        ...

    def reject_policy(self, version: int, reason: str) -> None:
        """Mark a candidate rejected, keeping the reason."""
        ...


class EvaluationOps(Protocol):
    """Stored evaluations and their item results."""

    def save_evaluation(
        self, evaluation: EvaluationRecord, items: Sequence[EvaluationItemRecord]
    ) -> int:
        """Store an evaluation with its items (``id`` and ``created_at`` are assigned here);
        returns its id."""
        ...

    def evaluation(
        self, evaluation_id: int
    ) -> tuple[EvaluationRecord, builtins.list[EvaluationItemRecord]] | None:
        """One evaluation and its items in stored order (None: no such id)."""
        ...

    def evaluations(self, policy_version: int | None = None) -> builtins.list[EvaluationRecord]:
        """Every evaluation (of one policy version), oldest first."""
        ...


class ServedResponseOps(Protocol):
    """What ``tepo-agent serve --record`` maps: response ids and sessions to trajectories."""

    def record_served(self, responses: Sequence[ServedResponse]) -> None:
        """Keep these mappings (a repeated (response_id, trajectory_id) pair is replaced)."""
        ...

    def served_trajectory_ids(
        self,
        *,
        response_id: str | None = None,
        trajectory_id: str | None = None,
        session_id: str | None = None,
        owner: str | None = None,
    ) -> set[str]:
        """Trajectory ids recorded for exactly one of ``response_id``, ``trajectory_id`` or
        ``session_id`` (ConfigError otherwise), of ``owner`` only when it is given."""
        ...

    def session_trajectories(
        self, session_id: str, owner: str | None = None
    ) -> builtins.list[SessionTrajectory]:
        """The stored trajectories of a session (of ``owner`` when given), in ``seq`` order."""
        ...


class ReportOps(Protocol):
    """Aggregates computed by the database for the report and the dashboard."""

    def report_stamp(self) -> str:
        """An opaque value that changes whenever anything the report shows changes."""
        ...

    def version_stats(self) -> builtins.list[VersionStats]:
        """Per policy version over every trajectory, by version (None first)."""
        ...

    def tool_stats(self) -> builtins.list[ToolStats]:
        """Per tool over every tool turn, most called first."""
        ...


@runtime_checkable
class Store(TrajectoryOps, PolicyOps, EvaluationOps, ServedResponseOps, ReportOps, Protocol):
    """A trajectory store (see the module docstring for the contract). Use it as a context
    manager, or call :meth:`close`."""

    @property
    def location(self) -> str:
        """Where the store is, for messages: a file path, or a URL without its password."""
        ...

    @property
    def schema_version(self) -> int:
        """The database's schema version (the last migration applied)."""
        ...

    def close(self) -> None:
        """Release the connection(s); later calls raise StoreError."""
        ...

    def __enter__(self) -> Store: ...

    def __exit__(self, *exc_info: object) -> None: ...
