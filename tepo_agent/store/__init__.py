"""The trajectory store: token-exact trajectories, feedback and trainer steps in one SQLite file.

    from tepo_agent.store import TrajectoryStore

    with TrajectoryStore("tepo-agent.db") as store:
        tid = store.add(trajectory)
        store.record_feedback(tid, 1.0)
        groups = store.scored_since(cursor)

See :mod:`tepo_agent.store._store` for the concurrency and cursor rules and
:mod:`tepo_agent.store.schema` for the tables, migrations and durability settings.
"""

from tepo_agent.store._codec import from_row
from tepo_agent.store._records import TrainStep, TrajectoryGroup, TrajectorySummary
from tepo_agent.store._store import TrajectoryStore, default_db_path
from tepo_agent.store.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "TrainStep",
    "TrajectoryGroup",
    "TrajectoryStore",
    "TrajectorySummary",
    "default_db_path",
    "from_row",
]
