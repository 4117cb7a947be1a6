"""Policy versions as the store keeps them, and the lifecycle rules every backend applies.

The registry's state machine (docs/architecture.md, invariant 7) is decided here, once, so the
SQLite and the PostgreSQL store refuse the same transitions with the same words and write the
same history rows. A backend reads the current status inside its own atomic operation, asks
:func:`check_transition`, then writes what :func:`registration_events` (or the fixed events of
a promotion) say::

    register ─► candidate ─► promote ─► live ─► (next promote / rollback) ─► retired
                    │                                                          │
                    └─► reject ─► rejected                  rollback(v) ◄──────┘
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tepo_agent.errors import ConfigError, PublishError

PolicyKind = Literal["full", "lora"]
"""``full``: a complete model directory; ``lora``: a PEFT adapter directory over the base."""

PolicyStatus = Literal["candidate", "live", "rejected", "retired"]

PolicyEventKind = Literal["registered", "gated", "promoted", "rejected", "retired", "rolled_back"]
"""What happened to a version: ``gated`` carries the gate's evaluation (``metrics["gate"]`` at
registration), ``rejected`` the reason, ``promoted``/``rolled_back`` the version they replaced."""

LiveTransition = Literal["promote", "rollback"]
"""How a version becomes live: ``promote`` a candidate, ``rollback`` to a retired version."""


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


def check_kind(kind: str) -> None:
    if kind not in get_args(PolicyKind):
        raise ConfigError(f"policy kind must be one of {get_args(PolicyKind)}, got {kind!r}")


def not_registered(version: int) -> PublishError:
    return PublishError(f"policy version {version} is not registered")


def unknown_parent(parent: int) -> PublishError:
    return PublishError(f"parent version {parent} is not registered")


def base_mismatch(stored: str, path: str) -> PublishError:
    return PublishError(
        f"version 0 is already the base model at {stored!r}, not {path!r}; use a new database "
        "for a different base model"
    )


def check_live_transition(version: int, status: str, how: LiveTransition) -> bool:
    """Whether making ``version`` (now ``status``) live changes anything; raises
    :class:`PublishError` when the transition is not allowed. False: it is live already."""
    if status == "live":
        return False
    allowed, verb = ("candidate", "promote") if how == "promote" else ("retired", "roll back to")
    if status != allowed:
        raise PublishError(f"cannot {verb} version {version}: it is {status}, expected {allowed}")
    return True


def check_reject(version: int, status: str) -> None:
    if status != "candidate":
        raise PublishError(
            f"cannot reject version {version}: it is {status}, and only candidates can be "
            "rejected (use rollback to replace a live version)"
        )


def live_events(
    version: int, status: str, replaced: int | None
) -> list[tuple[int, PolicyEventKind, dict[str, Any]]]:
    """The history rows of making ``version`` (previously ``status``) live over ``replaced``."""
    kind: PolicyEventKind = "promoted" if status == "candidate" else "rolled_back"
    events: list[tuple[int, PolicyEventKind, dict[str, Any]]] = []
    if replaced is not None:
        events.append((replaced, "retired", {"by": version}))
    events.append((version, kind, {"replaced": replaced}))
    return events


def registration_events(
    kind: PolicyKind, parent: int | None, metrics: dict[str, Any] | None
) -> list[tuple[PolicyEventKind, dict[str, Any]]]:
    """The history rows of registering a candidate (``gated`` when the gate's figures come with
    it: publish_checkpoint stores them under ``metrics["gate"]``)."""
    events: list[tuple[PolicyEventKind, dict[str, Any]]] = [
        ("registered", {"kind": kind, "parent": parent})
    ]
    if metrics and isinstance(metrics.get("gate"), dict):
        events.append(("gated", {"gate": metrics["gate"], "live_gate": metrics.get("live_gate")}))
    return events


def base_events(kind: PolicyKind, live: bool) -> list[tuple[PolicyEventKind, dict[str, Any]]]:
    """The history rows of registering the base model as version 0."""
    events: list[tuple[PolicyEventKind, dict[str, Any]]] = [
        ("registered", {"kind": kind, "base": True})
    ]
    if live:
        events.append(("promoted", {"reason": "base model"}))
    return events
