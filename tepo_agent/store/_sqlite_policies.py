"""The policy registry's operations on SQLite (the ``policies`` and ``policy_events`` tables).

Each operation is one ``BEGIN IMMEDIATE`` transaction: the status it checks cannot change
before its own write commits, and its history rows commit with it. The unique index
``policies_one_live`` makes "at most one live version" a property of the file itself. The
transitions and their wording come from :mod:`tepo_agent.store._policy`, shared by every backend.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Sequence
from typing import Any

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.store._codec import load_json
from tepo_agent.store._policy import PolicyEvent, PolicyKind, PolicyRecord, check_kind
from tepo_agent.store._policy_writes import Run, ensure_base, make_live, register, reject
from tepo_agent.store._sqlite_base import SqliteTables


def _record(row: dict[str, Any]) -> PolicyRecord:
    return PolicyRecord(**{**row, "metrics": load_json(row["metrics"]) or {}})


class PolicyTables(SqliteTables):
    """:class:`~tepo_agent.store.protocol.PolicyOps` on SQLite."""

    def live_policy(self) -> PolicyRecord | None:
        rows = self.read("SELECT * FROM policies WHERE status = 'live'")
        return _record(rows[0]) if rows else None

    def policy(self, version: int) -> PolicyRecord | None:
        rows = self.read("SELECT * FROM policies WHERE version = ?", [version])
        return _record(rows[0]) if rows else None

    def policies(self) -> builtins.list[PolicyRecord]:
        return [_record(r) for r in self.read("SELECT * FROM policies ORDER BY version")]

    def policy_events(self, version: int | None = None) -> builtins.list[PolicyEvent]:
        if "policy_events" not in self._tables():  # a file older than its migration, read-only
            return []
        where, params = ("WHERE version = ?", [version]) if version is not None else ("", [])
        rows = self.read(f"SELECT * FROM policy_events {where} ORDER BY id", params)
        return [PolicyEvent(**{**r, "detail": load_json(r["detail"]) or {}}) for r in rows]

    def ensure_base_policy(self, path: str, kind: PolicyKind) -> None:
        check_kind(kind)
        self.write(lambda db: ensure_base(_runner(db), str(path), kind, time.time()))

    def register_policy(
        self, path: str, *, kind: PolicyKind, parent: int | None, metrics: dict[str, Any]
    ) -> int:
        check_kind(kind)
        return int(
            self.write(
                lambda db: register(_runner(db), str(path), kind, parent, metrics, time.time())
            )
        )

    def promote_policy(self, version: int) -> None:
        self.write(lambda db: make_live(_runner(db), version, "promote", time.time()))

    def rollback_policy(self, version: int) -> None:
        self.write(lambda db: make_live(_runner(db), version, "rollback", time.time()))

    def reject_policy(self, version: int, reason: str) -> None:
        self.write(lambda db: reject(_runner(db), version, reason, time.time()))


def _runner(db: sqlite_utils.Database) -> Run:
    """:data:`~tepo_agent.store._policy_writes.Run` on the write transaction's connection."""

    def run(sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cur = db.execute(sql, list(params))
        if cur.description is None:
            return []
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    return run
