"""The policy registry's writes, once for both backends (inside the backend's own transaction).

Each function takes ``run(sql, params)``: one statement on the backend's open transaction, SQL
written with ``?`` placeholders, rows as dicts (none for a write). The backend supplies the
transaction that makes the read-check-write atomic (SQLite's ``BEGIN IMMEDIATE``, PostgreSQL's
registry advisory lock); the rules and messages are :mod:`tepo_agent.store._policy`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from tepo_agent.store._codec import dump_json
from tepo_agent.store._policy import (
    LiveTransition,
    PolicyEventKind,
    PolicyKind,
    base_events,
    base_mismatch,
    check_live_transition,
    check_reject,
    live_events,
    not_registered,
    registration_events,
    unknown_parent,
)

Run = Callable[[str, Sequence[Any]], list[dict[str, Any]]]
"""One statement (``?`` placeholders) in the caller's transaction; its rows as dicts."""

_INSERT_POLICY = (
    "INSERT INTO policies (version, parent, path, kind, status, metrics, reason, created_at, "
    "updated_at) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)"
)


def add_event(
    run: Run, version: int, event: PolicyEventKind, detail: dict[str, Any], now: float
) -> None:
    """Append to ``policy_events`` (inside the caller's transaction, with the change itself)."""
    run(
        "INSERT INTO policy_events (version, event, detail, created_at) VALUES (?, ?, ?, ?)",
        [version, event, dump_json(detail), now],
    )


def status_of(run: Run, version: int) -> str | None:
    """The version's status, or None where it is not registered."""
    rows = run("SELECT status FROM policies WHERE version = ?", [version])
    return None if not rows else str(rows[0]["status"])


def existing_status(run: Run, version: int) -> str:
    status = status_of(run, version)
    if status is None:
        raise not_registered(version)
    return status


def ensure_base(run: Run, path: str, kind: PolicyKind, now: float) -> None:
    """Register the base model as version 0 once (live unless a version is live already)."""
    rows = run("SELECT path FROM policies WHERE version = 0", [])
    if rows:
        if rows[0]["path"] != path:
            raise base_mismatch(rows[0]["path"], path)
        return
    live = not run("SELECT 1 AS one FROM policies WHERE status = 'live'", [])
    run(_INSERT_POLICY, [0, None, path, kind, "live" if live else "retired", "{}", now, now])
    for event, detail in base_events(kind, live):
        add_event(run, 0, event, detail, now)


def register(
    run: Run, path: str, kind: PolicyKind, parent: int | None, metrics: dict[str, Any], now: float
) -> int:
    """Add a candidate version (``max + 1``; the caller's transaction serialises this)."""
    if parent is not None and status_of(run, parent) is None:
        raise unknown_parent(parent)
    top = run("SELECT MAX(version) AS top FROM policies", [])[0]["top"]
    version = 1 if top is None else int(top) + 1
    encoded = dump_json(metrics or {})
    run(_INSERT_POLICY, [version, parent, path, kind, "candidate", encoded, now, now])
    for event, detail in registration_events(kind, parent, metrics):
        add_event(run, version, event, detail, now)
    return version


def reject(run: Run, version: int, reason: str, now: float) -> None:
    check_reject(version, existing_status(run, version))
    run(
        "UPDATE policies SET status = 'rejected', reason = ?, updated_at = ? WHERE version = ?",
        [reason, now, version],
    )
    add_event(run, version, "rejected", {"reason": reason}, now)


def make_live(run: Run, version: int, how: LiveTransition, now: float) -> None:
    """Promote or roll back to ``version``: the live one (if any) retires first."""
    status = existing_status(run, version)
    if not check_live_transition(version, status, how):
        return
    rows = run("SELECT version FROM policies WHERE status = 'live'", [])
    replaced = None if not rows else int(rows[0]["version"])
    # Retire first: the unique index allows at most one live row at any statement.
    run("UPDATE policies SET status = 'retired', updated_at = ? WHERE status = 'live'", [now])
    run("UPDATE policies SET status = 'live', updated_at = ? WHERE version = ?", [now, version])
    for event_version, event, detail in live_events(version, status, replaced):
        add_event(run, event_version, event, detail, now)
