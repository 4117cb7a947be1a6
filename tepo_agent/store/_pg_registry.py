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
from collections.abc import Callable, Sequence
from typing import Any

from tepo_agent.store._codec import load_json
from tepo_agent.store._policy import PolicyEvent, PolicyKind, PolicyRecord, check_kind
from tepo_agent.store._policy_writes import Run, ensure_base, make_live, register, reject

REGISTRY_LOCK = 7_405_611_004
"""Advisory lock key held by every registry write until it commits."""


def _record(row: dict[str, Any]) -> PolicyRecord:
    return PolicyRecord(**{**row, "metrics": load_json(row["metrics"]) or {}})


class PgPolicyOps:
    """``PolicyOps`` of the protocol over the store's ``_transaction`` and ``_read``."""

    _transaction: Callable[..., Any]
    _read: Callable[..., builtins.list[dict[str, Any]]]

    def _registry_write(self, fn: Callable[[Run], Any]) -> Any:
        """``fn(run)`` in one transaction that holds the registry lock (``run``: a statement
        with ``?`` placeholders on that transaction, rows as dicts)."""

        def locked(conn: Any) -> Any:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [REGISTRY_LOCK])

            def run(sql: str, params: Sequence[Any]) -> builtins.list[dict[str, Any]]:
                cur = conn.execute(sql.replace("?", "%s"), params)
                return cur.fetchall() if cur.description is not None else []

            return fn(run)

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
        self._registry_write(lambda run: ensure_base(run, str(path), kind, time.time()))

    def register_policy(
        self, path: str, *, kind: PolicyKind, parent: int | None, metrics: dict[str, Any]
    ) -> int:
        check_kind(kind)
        return int(
            self._registry_write(
                lambda run: register(run, str(path), kind, parent, metrics, time.time())
            )
        )

    def promote_policy(self, version: int) -> None:
        self._registry_write(lambda run: make_live(run, version, "promote", time.time()))

    def rollback_policy(self, version: int) -> None:
        self._registry_write(lambda run: make_live(run, version, "rollback", time.time()))

    def reject_policy(self, version: int, reason: str) -> None:
        self._registry_write(lambda run: reject(run, version, reason, time.time()))
