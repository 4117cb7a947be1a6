"""The policy registry's operations on SQLite (the ``policies`` and ``policy_events`` tables).

Each operation is one ``BEGIN IMMEDIATE`` transaction: the status it checks cannot change
before its own write commits, and its history rows commit with it. The unique index
``policies_one_live`` makes "at most one live version" a property of the file itself. The
transitions and their wording come from :mod:`tepo_agent.store._policy`, shared by every backend.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.store._codec import dump_json, load_json
from tepo_agent.store._policy import (
    LiveTransition,
    PolicyEvent,
    PolicyEventKind,
    PolicyKind,
    PolicyRecord,
    base_events,
    base_mismatch,
    check_kind,
    check_live_transition,
    check_reject,
    live_events,
    not_registered,
    registration_events,
    unknown_parent,
)
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

        def apply(db: sqlite_utils.Database) -> None:
            row = db.execute("SELECT path FROM policies WHERE version = 0").fetchone()
            if row is not None:
                if row[0] != path:
                    raise base_mismatch(row[0], path)
                return
            has_live = db.execute("SELECT 1 FROM policies WHERE status = 'live'").fetchone()
            now = time.time()
            db.table("policies").insert(
                {"version": 0, "parent": None, "path": path, "kind": kind,
                 "status": "retired" if has_live else "live", "metrics": "{}",
                 "reason": None, "created_at": now, "updated_at": now}
            )  # fmt: skip
            for event, detail in base_events(kind, live=not has_live):
                _event(db, 0, event, detail, now)

        self.write(apply)

    def register_policy(
        self, path: str, *, kind: PolicyKind, parent: int | None, metrics: dict[str, Any]
    ) -> int:
        check_kind(kind)
        row = {"path": path, "kind": kind, "parent": parent, "status": "candidate",
               "metrics": dump_json(metrics), "reason": None}  # fmt: skip

        def apply(db: sqlite_utils.Database) -> int:
            if parent is not None and _status(db, parent) is None:
                raise unknown_parent(parent)
            top = db.execute("SELECT MAX(version) FROM policies").fetchone()[0]
            version = 1 if top is None else int(top) + 1
            now = time.time()
            db.table("policies").insert(
                {**row, "version": version, "created_at": now, "updated_at": now}
            )
            for event, detail in registration_events(kind, parent, metrics):
                _event(db, version, event, detail, now)
            return version

        return int(self.write(apply))

    def promote_policy(self, version: int) -> None:
        self._make_live(version, "promote")

    def rollback_policy(self, version: int) -> None:
        self._make_live(version, "rollback")

    def reject_policy(self, version: int, reason: str) -> None:
        def apply(db: sqlite_utils.Database) -> None:
            check_reject(version, _existing_status(db, version))
            now = time.time()
            db.execute(
                "UPDATE policies SET status = 'rejected', reason = ?, updated_at = ? "
                "WHERE version = ?",
                [reason, now, version],
            )
            _event(db, version, "rejected", {"reason": reason}, now)

        self.write(apply)

    def _make_live(self, version: int, how: LiveTransition) -> None:
        def apply(db: sqlite_utils.Database) -> None:
            status = _existing_status(db, version)
            if not check_live_transition(version, status, how):
                return
            now = time.time()
            row = db.execute("SELECT version FROM policies WHERE status = 'live'").fetchone()
            replaced = None if row is None else int(row[0])
            # Retire first: the unique index allows at most one live row at any statement.
            db.execute(
                "UPDATE policies SET status = 'retired', updated_at = ? WHERE status = 'live'",
                [now],
            )
            db.execute(
                "UPDATE policies SET status = 'live', updated_at = ? WHERE version = ?",
                [now, version],
            )
            for v, event, detail in live_events(version, status, replaced):
                _event(db, v, event, detail, now)

        self.write(apply)


def _event(
    db: sqlite_utils.Database,
    version: int,
    event: PolicyEventKind,
    detail: dict[str, Any],
    now: float,
) -> None:
    """Append to ``policy_events`` (inside the caller's transaction, with the change itself)."""
    db.execute(
        "INSERT INTO policy_events (version, event, detail, created_at) VALUES (?, ?, ?, ?)",
        [version, event, dump_json(detail), now],
    )


def _status(db: sqlite_utils.Database, version: int) -> str | None:
    row = db.execute("SELECT status FROM policies WHERE version = ?", [version]).fetchone()
    return None if row is None else str(row[0])


def _existing_status(db: sqlite_utils.Database, version: int) -> str:
    status = _status(db, version)
    if status is None:
        raise not_registered(version)
    return status
