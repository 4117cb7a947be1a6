"""What ``tepo-agent serve --record`` maps, on SQLite (the ``served_responses`` table).

Feedback over HTTP names a completion's response id, a trajectory id or a session; these
operations find the recorded trajectories it may score (of one API key's owner, unless an admin
asks) and show a session's stored trajectories.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Sequence

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import ConfigError
from tepo_agent.store._side_records import ServedResponse, SessionTrajectory
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
        return {r["id"] for r in self.read(sql, params)}

    def session_trajectories(
        self, session_id: str, owner: str | None = None
    ) -> builtins.list[SessionTrajectory]:
        sql = (
            "SELECT t.id, t.status, t.score, t.policy_version, t.num_turns, t.num_tool_calls, "
            "json_extract(t.metadata, '$.started') AS started, "
            "json_extract(t.metadata, '$.ended') AS ended, "
            "json_extract(t.metadata, '$.response_ids') AS response_ids "
            "FROM trajectories t WHERE t.id IN (SELECT trajectory_id FROM served_responses "
            "WHERE session_id = ?" + ("" if owner is None else " AND owner = ?") + ") "
            "ORDER BY t.seq"
        )
        rows = self.read(sql, [session_id] if owner is None else [session_id, owner])
        return [
            SessionTrajectory(**{**r, "response_ids": json.loads(r["response_ids"] or "[]")})
            for r in rows
        ]
