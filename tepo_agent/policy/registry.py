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

Serving processes poll :meth:`PolicyRegistry.live`; it is one indexed read (on SQLite a WAL
reader, which never waits for writers), so polling it between requests is cheap. The rules and
the atomic writes live in the store (:class:`~tepo_agent.store.protocol.PolicyOps`, the same on
every backend); this class is the registry's API over them.
"""

from __future__ import annotations

import os
from typing import Any

from tepo_agent.store import (
    PolicyEvent,
    PolicyEventKind,
    PolicyKind,
    PolicyRecord,
    PolicyStatus,
    Store,
    open_store,
)
from tepo_agent.store._policy import check_kind, not_registered

__all__ = [
    "PolicyEvent",
    "PolicyEventKind",
    "PolicyKind",
    "PolicyRecord",
    "PolicyRegistry",
    "PolicyStatus",
]


class PolicyRegistry:
    """Register, promote, reject and roll back policy versions stored in a trajectory store.

    Args:
        store_or_path: An open store (shared, not closed by the registry) or a database path or
            URL (opened here with :func:`~tepo_agent.store.open_store`, closed by :meth:`close`).
    """

    def __init__(self, store_or_path: Store | str | os.PathLike[str]) -> None:
        if isinstance(store_or_path, str | os.PathLike):
            self.store, self._owns_store = open_store(store_or_path), True
        else:
            self.store, self._owns_store = store_or_path, False

    # -- reads ---------------------------------------------------------------------------------

    def live(self) -> PolicyRecord | None:
        """The live version, or None if none is live yet."""
        return self.store.live_policy()

    def get(self, version: int) -> PolicyRecord:
        record = self.store.policy(version)
        if record is None:
            raise not_registered(version)
        return record

    def list(self) -> list[PolicyRecord]:
        """Every version, oldest first."""
        return self.store.policies()

    def events(self, version: int | None = None) -> list[PolicyEvent]:
        """The recorded history, oldest first (of one version, or of all)."""
        return self.store.policy_events(version)

    # -- writes --------------------------------------------------------------------------------

    def ensure_base(
        self, path: str | os.PathLike[str], *, kind: PolicyKind = "full"
    ) -> PolicyRecord:
        """Register the base model as version 0 (live if nothing else is); idempotent."""
        check_kind(kind)
        self.store.ensure_base_policy(str(path), kind)
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
        check_kind(kind)
        return self.store.register_policy(
            str(path), kind=kind, parent=parent, metrics=metrics or {}
        )

    def promote(self, version: int) -> PolicyRecord:
        """Make a candidate live; the previous live version becomes retired (one transaction)."""
        self.store.promote_policy(version)
        return self.get(version)

    def rollback(self, version: int) -> PolicyRecord:
        """Make an earlier, retired version live again; the current live one is retired."""
        self.store.rollback_policy(version)
        return self.get(version)

    def reject(self, version: int, reason: str) -> PolicyRecord:
        """Mark a candidate as rejected (it failed its gate), keeping the reason."""
        self.store.reject_policy(version, reason)
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
