"""The policy registry's operations on PostgreSQL (a part of :class:`PostgresStore`).

Each write is one transaction that first takes ``pg_advisory_xact_lock(REGISTRY_LOCK)``, so
registry writes from any number of hosts run one at a time, as under SQLite's write lock: a new
version is ``max + 1`` without a race, and a transition is checked against the status it
changes. The rules and messages are :mod:`tepo_agent.store._policy`'s, shared with SQLite. At
most one live policy is also enforced by the partial unique index ``policies_one_live``.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable
from typing import Any

from tepo_agent.store._codec import dump_json, load_json
from tepo_agent.store._policy import (
    LiveTransition,
    PolicyEvent,
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

REGISTRY_LOCK = 7_405_611_004
"""Advisory lock key held by every registry write until it commits."""


def _record(row: dict[str, Any]) -> PolicyRecord:
    return PolicyRecord(**{**row, "metrics": load_json(row["metrics"]) or {}})


def _event(conn: Any, version: int, event: str, detail: dict[str, Any], now: float) -> None:
    conn.execute(
        "INSERT INTO policy_events (version, event, detail, created_at) VALUES (%s, %s, %s, %s)",
        [version, event, dump_json(detail), now],
    )


def _status(conn: Any, version: int) -> str:
    row = conn.execute("SELECT status FROM policies WHERE version = %s", [version]).fetchone()
    if row is None:
        raise not_registered(version)
    return str(row["status"])


class PgPolicyOps:
    """``PolicyOps`` of the protocol over the store's ``_transaction`` and ``_read``."""

    _transaction: Callable[..., Any]
    _read: Callable[..., builtins.list[dict[str, Any]]]

    def _registry_write(self, fn: Callable[[Any], Any]) -> Any:
        def locked(conn: Any) -> Any:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [REGISTRY_LOCK])
            return fn(conn)

        return self._transaction(locked)

    def live_policy(self) -> PolicyRecord | None:
        rows = self._read("SELECT * FROM policies WHERE status = 'live'")
        return _record(rows[0]) if rows else None

    def policy(self, version: int) -> PolicyRecord | None:
        rows = self._read("SELECT * FROM policies WHERE version = %s", [version])
        return _record(rows[0]) if rows else None

    def policies(self) -> builtins.list[PolicyRecord]:
        return [_record(r) for r in self._read("SELECT * FROM policies ORDER BY version")]

    def policy_events(self, version: int | None = None) -> builtins.list[PolicyEvent]:
        where, params = ("WHERE version = %s", [version]) if version is not None else ("", [])
        rows = self._read(f"SELECT * FROM policy_events {where} ORDER BY id", params)
        return [PolicyEvent(**{**r, "detail": load_json(r["detail"]) or {}}) for r in rows]

    def ensure_base_policy(self, path: str, kind: PolicyKind) -> None:
        check_kind(kind)
        path = str(path)

        def apply(conn: Any) -> None:
            row = conn.execute("SELECT path FROM policies WHERE version = 0").fetchone()
            if row is not None:
                if row["path"] != path:
                    raise base_mismatch(row["path"], path)
                return
            live = conn.execute("SELECT 1 FROM policies WHERE status = 'live'").fetchone() is None
            now = time.time()
            conn.execute(
                "INSERT INTO policies (version, parent, path, kind, status, metrics, reason, "
                "created_at, updated_at) VALUES (0, NULL, %s, %s, %s, '{}', NULL, %s, %s)",
                [path, kind, "live" if live else "retired", now, now],
            )
            for event, detail in base_events(kind, live):
                _event(conn, 0, event, detail, now)

        self._registry_write(apply)

    def register_policy(
        self, path: str, *, kind: PolicyKind, parent: int | None, metrics: dict[str, Any]
    ) -> int:
        check_kind(kind)
        encoded = dump_json(metrics or {})

        def apply(conn: Any) -> int:
            if (
                parent is not None
                and conn.execute("SELECT 1 FROM policies WHERE version = %s", [parent]).fetchone()
                is None
            ):
                raise unknown_parent(parent)
            top = conn.execute("SELECT MAX(version) AS top FROM policies").fetchone()["top"]
            version = 1 if top is None else int(top) + 1
            now = time.time()
            conn.execute(
                "INSERT INTO policies (version, parent, path, kind, status, metrics, reason, "
                "created_at, updated_at) VALUES (%s, %s, %s, %s, 'candidate', %s, NULL, %s, %s)",
                [version, parent, str(path), kind, encoded, now, now],
            )
            for event, detail in registration_events(kind, parent, metrics):
                _event(conn, version, event, detail, now)
            return version

        return int(self._registry_write(apply))

    def promote_policy(self, version: int) -> None:
        self._make_live(version, "promote")

    def rollback_policy(self, version: int) -> None:
        self._make_live(version, "rollback")

    def reject_policy(self, version: int, reason: str) -> None:
        def apply(conn: Any) -> None:
            check_reject(version, _status(conn, version))
            now = time.time()
            conn.execute(
                "UPDATE policies SET status = 'rejected', reason = %s, updated_at = %s "
                "WHERE version = %s",
                [reason, now, version],
            )
            _event(conn, version, "rejected", {"reason": reason}, now)

        self._registry_write(apply)

    def _make_live(self, version: int, how: LiveTransition) -> None:
        def apply(conn: Any) -> None:
            status = _status(conn, version)
            if not check_live_transition(version, status, how):
                return
            now = time.time()
            row = conn.execute("SELECT version FROM policies WHERE status = 'live'").fetchone()
            replaced = None if row is None else int(row["version"])
            # Retire first: the unique index allows at most one live row at any statement.
            conn.execute(
                "UPDATE policies SET status = 'retired', updated_at = %s WHERE status = 'live'",
                [now],
            )
            conn.execute(
                "UPDATE policies SET status = 'live', updated_at = %s WHERE version = %s",
                [now, version],
            )
            for event_version, event, detail in live_events(version, status, replaced):
                _event(conn, event_version, event, detail, now)

        self._registry_write(apply)
