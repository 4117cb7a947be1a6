"""What ``tepo-agent serve --record`` maps, on SQLite (the ``served_responses`` table).

Feedback over HTTP names a completion's response id, a trajectory id or a session; the lookups
that find the recorded trajectories it may score and show a session's stored trajectories are
the same on both backends (:mod:`tepo_agent.store._shared`); here is the SQLite upsert.
"""

from __future__ import annotations

from collections.abc import Sequence

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.store._side_records import ServedResponse
from tepo_agent.store._sqlite_base import SqliteTables


class ServedTables(SqliteTables):
    """:class:`~tepo_agent.store.protocol.ServedResponseOps` on SQLite."""

    def record_served(self, responses: Sequence[ServedResponse]) -> None:
        rows = [
            (r.response_id, r.trajectory_id, r.session_id, r.owner, r.created_at) for r in responses
        ]

        def insert(db: sqlite_utils.Database) -> None:
            db.conn.executemany(
                "INSERT OR REPLACE INTO served_responses (response_id, trajectory_id, "
                "session_id, owner, created_at) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

        self.write(insert)
