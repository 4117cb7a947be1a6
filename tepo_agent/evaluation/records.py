"""Evaluations in the trajectory database: the ``evaluations`` and ``evaluation_items`` tables.

Schema migration 3 (``tepo_agent.store.schema``) adds them. An evaluation is stored with its
settings, its summary (JSON) and every item result, so a later report can show the figures per
policy version and a later comparison can pair items::

    eval_id = save_evaluation(store, items, meta=EvalMeta(suite="all", seed=1000, ...))
    meta, items = load_evaluation(store, eval_id)
    rows = list_evaluations(store, policy_version=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tepo_agent.errors import StoreError
from tepo_agent.evaluation.calls import CallOutcome
from tepo_agent.evaluation.items import ItemResult
from tepo_agent.evaluation.report import summarize
from tepo_agent.store import EvaluationItemRecord, EvaluationRecord, Store


@dataclass(frozen=True)
class EvalMeta:
    """What an evaluation was.

    Attributes:
        suite: ``math``, ``knowledge``, ``deep_search`` or ``all``.
        seed: The held-out seed the items came from.
        n: Items per suite.
        samples, temperature: How each item was run.
        policy_version: The registry version evaluated (None for a model outside a registry).
        label: Free text: ``eval``, ``gate``, ``demo-before``, ``compare sparse seed 1``...
        config: Everything else worth keeping (model path, base URL, agent limits).
    """

    suite: str
    seed: int
    n: int
    samples: int = 1
    temperature: float = 0.0
    policy_version: int | None = None
    label: str | None = None
    config: dict[str, Any] = field(default_factory=dict)


def _item_record(r: ItemResult) -> EvaluationItemRecord:
    return EvaluationItemRecord(
        task_id=r.task_id,
        sample=r.sample,
        suite=r.suite,
        needs_tool=r.needs_tool,
        score=r.score,
        answer=r.answer,
        status=r.status,
        tool_calls=len(r.calls),
        calls=[c.to_json() for c in r.calls],
        policy_version=r.policy_version,
        entropy_kind=r.entropy_kind,
    )


def _item_result(r: EvaluationItemRecord) -> ItemResult:
    return ItemResult(
        task_id=r.task_id,
        suite=r.suite,
        needs_tool=r.needs_tool,
        sample=r.sample,
        score=r.score,
        answer=r.answer,
        status=r.status,
        calls=tuple(CallOutcome(**c) for c in r.calls),
        policy_version=r.policy_version,
        entropy_kind=r.entropy_kind,
    )


def save_evaluation(store: Store, items: Sequence[ItemResult], meta: EvalMeta) -> int:
    """Store an evaluation and its items in one transaction; returns its id."""
    summary = summarize(items)
    record = EvaluationRecord(
        policy_version=meta.policy_version,
        label=meta.label,
        suite=meta.suite,
        seed=meta.seed,
        n=meta.n,
        samples=meta.samples,
        temperature=meta.temperature,
        entropy_kind=",".join(summary.entropy_kinds) or None,
        config=meta.config,
        summary=summary.to_json(),
    )
    return store.save_evaluation(record, [_item_record(r) for r in items])


def load_evaluation(store: Store, eval_id: int) -> tuple[EvalMeta, list[ItemResult]]:
    """A stored evaluation's settings and item results (in stored order)."""
    found = store.evaluation(eval_id)
    if found is None:
        raise StoreError(
            f"no evaluation {eval_id} in {store.location}; list them with list_evaluations"
        )
    record, items = found
    meta = EvalMeta(
        suite=record.suite,
        seed=record.seed,
        n=record.n,
        samples=record.samples,
        temperature=record.temperature,
        policy_version=record.policy_version,
        label=record.label,
        config=record.config,
    )
    return meta, [_item_result(r) for r in items]


def list_evaluations(store: Store, *, policy_version: int | None = None) -> list[dict[str, Any]]:
    """Stored evaluations (newest last) with their settings and summary, optionally for one
    policy version."""
    return [e.to_dict() for e in store.evaluations(policy_version)]


def find_evaluation(
    store: Store, *, policy_version: int, key: str
) -> tuple[EvalMeta, list[ItemResult]] | None:
    """The newest stored evaluation of ``policy_version`` made under the evaluation key ``key``
    (``config["key"]``: e.g. a ``GateConfig.key``, so only comparable evaluations match)."""
    for row in reversed(list_evaluations(store, policy_version=policy_version)):
        if row["config"].get("key") == key:
            return load_evaluation(store, int(row["id"]))
    return None


__all__ = ["EvalMeta", "find_evaluation", "list_evaluations", "load_evaluation", "save_evaluation"]
