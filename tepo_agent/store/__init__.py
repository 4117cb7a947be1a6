"""The trajectory store: token-exact trajectories, feedback, trainer steps, the policy registry,
evaluations and served responses, behind one protocol with two implementations.

    from tepo_agent.store import open_store

    with open_store("tepo-agent.db") as store:          # or "postgresql://host/db"
        tid = store.add(trajectory)
        store.record_feedback(tid, 1.0)
        groups = store.scored_since(cursor)

:mod:`tepo_agent.store.protocol` is the contract (:class:`Store`); :class:`TrajectoryStore` is
the SQLite implementation (see :mod:`tepo_agent.store._store` for its concurrency and cursor
rules and :mod:`tepo_agent.store.schema` for the tables, migrations and durability settings).
"""

from tepo_agent.store._codec import from_row
from tepo_agent.store._open import is_store_url, open_store, redact, sqlite_path
from tepo_agent.store._policy import (
    PolicyEvent,
    PolicyEventKind,
    PolicyKind,
    PolicyRecord,
    PolicyStatus,
)
from tepo_agent.store._records import TrainStep, TrajectoryGroup, TrajectorySummary
from tepo_agent.store._side_records import (
    EvaluationItemRecord,
    EvaluationRecord,
    FeedbackRow,
    ServedResponse,
    SessionTrajectory,
    ToolStats,
    TrajectoryFilter,
    VersionStats,
)
from tepo_agent.store._store import TrajectoryStore, default_db_path
from tepo_agent.store.protocol import Store
from tepo_agent.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "EvaluationItemRecord",
    "EvaluationRecord",
    "FeedbackRow",
    "PolicyEvent",
    "PolicyEventKind",
    "PolicyKind",
    "PolicyRecord",
    "PolicyStatus",
    "ServedResponse",
    "SessionTrajectory",
    "Store",
    "ToolStats",
    "TrainStep",
    "TrajectoryFilter",
    "TrajectoryGroup",
    "TrajectoryStore",
    "TrajectorySummary",
    "VersionStats",
    "default_db_path",
    "from_row",
    "is_store_url",
    "open_store",
    "redact",
    "sqlite_path",
]
