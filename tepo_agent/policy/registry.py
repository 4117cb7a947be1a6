"""The policy registry: which checkpoint is live, over the store's ``policies`` table.

Lifecycle of a version (docs/architecture.md, invariant 7)::

    register ─► candidate ─► promote ─► live ─► (next promote / rollback) ─► retired
                    │                                                          │
                    └─► reject ─► rejected                  rollback(v) ◄──────┘

- ``register`` gives a new checkpoint directory the next version number (max + 1) as a
  candidate; the trainer evaluates it on a held-out set before promoting it.
- ``promote`` makes a candidate live and retires the previous live version in ONE transaction,
  so a reader never sees zero or two live versions (a unique index enforces "at most one").
- ``rollback`` makes an earlier (retired) version live again, retiring the current one.
- Version 0 is the base model (``ensure_base``), live until the first promotion.

Every change is also appended to the ``policy_events`` table in the same transaction
(``registered``, ``gated``, ``promoted``, ``rejected``, ``retired``, ``rolled_back``, with their
times), so a version's history survives its status being overwritten: :meth:`PolicyRegistry.events`
reads it, and ``tepo-agent report`` draws it as a timeline.

Serving processes poll :meth:`PolicyRegistry.live`; it is one indexed SELECT on a WAL database,
which never waits for writers, so polling it between requests is cheap.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import ConfigError, PublishError
from tepo_agent.store import TrajectoryStore
from tepo_agent.store._codec import dump_json, load_json

PolicyKind = Literal["full", "lora"]
"""``full``: a complete model directory; ``lora``: a PEFT adapter directory over the base."""

PolicyStatus = Literal["candidate", "live", "rejected", "retired"]

PolicyEventKind = Literal["registered", "gated", "promoted", "rejected", "retired", "rolled_back"]
"""What happened to a version: ``gated`` carries the gate's evaluation (``metrics["gate"]`` at
registration), ``rejected`` the reason, ``promoted``/``rolled_back`` the version they replaced."""


@dataclass(frozen=True)
class PolicyRecord:
    """One registered policy version.

    Attributes:
        version: The version number (0 is the base model).
        parent: The version it was trained from (None for the base).
        path: The checkpoint directory (a model directory, or a LoRA adapter directory).
        kind: ``full`` or ``lora``.
        status: ``candidate``, ``live``, ``rejected`` or ``retired``.
        metrics: Evaluation metrics recorded at registration (JSON object).
        reason: Why it was rejected, if it was.
        created_at, updated_at: Unix times.
    """

    version: int
    parent: int | None
    path: str
    kind: PolicyKind
    status: PolicyStatus
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class PolicyEvent:
    """One entry of a version's history (the ``policy_events`` table)."""

    id: int
    version: int
    event: PolicyEventKind
    detail: dict[str, Any]
    created_at: float


def _record(row: dict[str, Any]) -> PolicyRecord:
    return PolicyRecord(**{**row, "metrics": load_json(row["metrics"]) or {}})


class PolicyRegistry:
    """Register, promote, reject and roll back policy versions stored in a trajectory database.

    Args:
        store_or_path: An open :class:`TrajectoryStore` (shared, not closed by the registry) or
            a database path (opened here, closed by :meth:`close`).
    """

    def __init__(self, store_or_path: TrajectoryStore | str | os.PathLike[str]) -> None:
        if isinstance(store_or_path, TrajectoryStore):
            self.store, self._owns_store = store_or_path, False
        else:
            self.store, self._owns_store = TrajectoryStore(store_or_path), True

    # -- reads ---------------------------------------------------------------------------------

    def live(self) -> PolicyRecord | None:
        """The live version, or None if none is live yet."""
        rows = self.store.read("SELECT * FROM policies WHERE status = 'live'")
        return _record(rows[0]) if rows else None

    def get(self, version: int) -> PolicyRecord:
        rows = self.store.read("SELECT * FROM policies WHERE version = ?", [version])
        if not rows:
            raise PublishError(f"policy version {version} is not registered")
        return _record(rows[0])

    def list(self) -> list[PolicyRecord]:
        """Every version, oldest first."""
        return [_record(r) for r in self.store.read("SELECT * FROM policies ORDER BY version")]

    def events(self, version: int | None = None) -> list[PolicyEvent]:
        """The recorded history, oldest first (of one version, or of all)."""
        where, params = ("WHERE version = ?", [version]) if version is not None else ("", [])
        rows = self.store.read(f"SELECT * FROM policy_events {where} ORDER BY id", params)
        return [PolicyEvent(**{**r, "detail": load_json(r["detail"]) or {}}) for r in rows]

    # -- writes --------------------------------------------------------------------------------

    def ensure_base(
        self, path: str | os.PathLike[str], *, kind: PolicyKind = "full"
    ) -> PolicyRecord:
        """Register the base model as version 0 (live if nothing else is); idempotent."""
        _check_kind(kind)
        path = str(path)

        def apply(db: sqlite_utils.Database) -> None:
            row = db.execute("SELECT path FROM policies WHERE version = 0").fetchone()
            if row is not None:
                if row[0] != path:
                    raise PublishError(
                        f"version 0 is already the base model at {row[0]!r}, not {path!r}; use a "
                        "new database for a different base model"
                    )
                return
            has_live = db.execute("SELECT 1 FROM policies WHERE status = 'live'").fetchone()
            now = time.time()
            db.table("policies").insert(
                {"version": 0, "parent": None, "path": path, "kind": kind,
                 "status": "retired" if has_live else "live", "metrics": "{}",
                 "reason": None, "created_at": now, "updated_at": now}
            )  # fmt: skip
            _event(db, 0, "registered", {"kind": kind, "base": True}, now)
            if not has_live:
                _event(db, 0, "promoted", {"reason": "base model"}, now)

        self.store.write(apply)
        return self.get(0)

    def register(
        self,
        path: str | os.PathLike[str],
        *,
        kind: PolicyKind,
        parent: int | None,
        metrics: dict[str, Any] | None = None,
    ) -> int:
        """Add a checkpoint directory as a new candidate version (max + 1, at least 1)."""
        _check_kind(kind)
        row = {"path": str(path), "kind": kind, "parent": parent, "status": "candidate",
               "metrics": dump_json(metrics or {}), "reason": None}  # fmt: skip

        def apply(db: sqlite_utils.Database) -> int:
            if parent is not None and not _exists(db, parent):
                raise PublishError(f"parent version {parent} is not registered")
            top = db.execute("SELECT MAX(version) FROM policies").fetchone()[0]
            version = 1 if top is None else int(top) + 1
            now = time.time()
            db.table("policies").insert(
                {**row, "version": version, "created_at": now, "updated_at": now}
            )
            _event(db, version, "registered", {"kind": kind, "parent": parent}, now)
            if metrics and isinstance(metrics.get("gate"), dict):
                # publish_checkpoint stores the gate's evaluation under metrics["gate"].
                gate = {"gate": metrics["gate"], "live_gate": metrics.get("live_gate")}
                _event(db, version, "gated", gate, now)
            return version

        return self.store.write(apply)

    def promote(self, version: int) -> PolicyRecord:
        """Make a candidate live; the previous live version becomes retired (one transaction)."""
        return self._make_live(version, allowed=("candidate",), verb="promote")

    def rollback(self, version: int) -> PolicyRecord:
        """Make an earlier, retired version live again; the current live one is retired."""
        return self._make_live(version, allowed=("retired",), verb="roll back to")

    def reject(self, version: int, reason: str) -> PolicyRecord:
        """Mark a candidate as rejected (it failed its gate), keeping the reason."""

        def apply(db: sqlite_utils.Database) -> None:
            status = _status(db, version)
            if status != "candidate":
                raise PublishError(
                    f"cannot reject version {version}: it is {status}, and only candidates can be "
                    "rejected (use rollback to replace a live version)"
                )
            now = time.time()
            db.execute(
                "UPDATE policies SET status = 'rejected', reason = ?, updated_at = ? "
                "WHERE version = ?",
                [reason, now, version],
            )
            _event(db, version, "rejected", {"reason": reason}, now)

        self.store.write(apply)
        return self.get(version)

    def _make_live(
        self, version: int, *, allowed: tuple[PolicyStatus, ...], verb: str
    ) -> PolicyRecord:
        def apply(db: sqlite_utils.Database) -> None:
            status = _status(db, version)
            if status == "live":
                return
            if status not in allowed:
                raise PublishError(
                    f"cannot {verb} version {version}: it is {status}, expected "
                    f"{' or '.join(allowed)}"
                )
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
            if replaced is not None:
                _event(db, replaced, "retired", {"by": version}, now)
            kind: PolicyEventKind = "promoted" if status == "candidate" else "rolled_back"
            _event(db, version, kind, {"replaced": replaced}, now)

        self.store.write(apply)
        return self.get(version)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the store if this registry opened it."""
        if self._owns_store:
            self.store.close()

    def __enter__(self) -> PolicyRegistry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_kind(kind: str) -> None:
    if kind not in get_args(PolicyKind):
        raise ConfigError(f"policy kind must be one of {get_args(PolicyKind)}, got {kind!r}")


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


def _exists(db: sqlite_utils.Database, version: int) -> bool:
    return db.execute("SELECT 1 FROM policies WHERE version = ?", [version]).fetchone() is not None


def _status(db: sqlite_utils.Database, version: int) -> str:
    row = db.execute("SELECT status FROM policies WHERE version = ?", [version]).fetchone()
    if row is None:
        raise PublishError(f"policy version {version} is not registered")
    return str(row[0])
