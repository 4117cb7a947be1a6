"""The report's aggregates on SQLite, computed by SQL over every row (a store holds 100k
trajectories and more; only the report's sample is ever read with its tokens).

A file written before ``policy_events``, ``evaluations`` or ``turns.error_kind`` existed (opened
read-only by the report, so never migrated by it) still reads: what it lacks reads as empty, and
a tool error's kind is derived from its wording (:func:`tepo_agent.trajectory.error_kind_from_text`,
registered on every connection as the SQL function ``error_kind_of``).
"""

from __future__ import annotations

import builtins
import json
import sqlite3

from tepo_agent.store._side_records import ToolStats, VersionStats
from tepo_agent.store._sqlite_base import SqliteTables
from tepo_agent.trajectory import error_kind_from_text


def register_functions(conn: sqlite3.Connection) -> None:
    """The SQL functions the report's queries use."""
    conn.create_function("error_kind_of", 1, error_kind_from_text, deterministic=True)


class ReportQueries(SqliteTables):
    """:class:`~tepo_agent.store.protocol.ReportOps` on SQLite."""

    def report_stamp(self) -> str:
        parts = [
            "SELECT max(seq), count(*), max(score_seq), total(score), total(reward) "
            "FROM trajectories",
            "SELECT max(id) FROM feedback",
            "SELECT max(step) FROM train_steps",
            "SELECT max(updated_at), count(*) FROM policies",
        ]
        tables = self._tables()
        parts += [
            f"SELECT max(id) FROM {t}" for t in ("policy_events", "evaluations") if t in tables
        ]
        return json.dumps([list(self.read(sql)[0].values()) for sql in parts])

    def version_stats(self) -> builtins.list[VersionStats]:
        rows = self.read(
            "SELECT policy_version AS version, count(*) AS runs, avg(score) AS score, "
            "count(score) AS scored, avg(reward) AS reward, avg(num_tool_calls) AS calls, "
            "total(num_entropy_reducing_calls) / nullif(total(num_tool_calls), 0) "
            "AS reducing_share FROM trajectories GROUP BY policy_version ORDER BY policy_version"
        )
        return [VersionStats(**r) for r in rows]

    def tool_stats(self) -> builtins.list[ToolStats]:
        stats = self.read(
            "SELECT coalesce(tool_name, '(unparsed)') AS name, count(*) AS calls, "
            "avg(delta_entropy) AS mean_delta_entropy, count(delta_entropy) AS known, "
            "1.0 * sum(delta_entropy < 0) / nullif(count(delta_entropy), 0) AS reducing_share, "
            "avg(tool_latency_s) AS mean_latency_s "
            "FROM turns WHERE role = 'tool' GROUP BY 1 ORDER BY calls DESC"
        )
        kind = (
            "coalesce(error_kind, error_kind_of(tool_error))"
            if "error_kind" in self._columns("turns")
            else "error_kind_of(tool_error)"
        )
        errors: dict[str, dict[str, int]] = {}
        for r in self.read(
            f"SELECT coalesce(tool_name, '(unparsed)') AS name, {kind} AS kind, count(*) AS n "
            "FROM turns WHERE role = 'tool' AND tool_error IS NOT NULL GROUP BY 1, 2"
        ):
            errors.setdefault(r["name"], {})[r["kind"]] = r["n"]
        return [ToolStats(**s, errors=errors.get(s["name"], {})) for s in stats]
