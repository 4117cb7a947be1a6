"""Evaluations in the trajectory database: the ``evaluations`` and ``evaluation_items`` tables.

Schema migration 3 (``tepo_agent.store.schema``) adds them. An evaluation is stored with its
settings, its summary (JSON) and every item result, so a later report can show the figures per
policy version and a later comparison can pair items::

    eval_id = save_evaluation(store, items, meta=EvalMeta(suite="all", seed=1000, ...))
    meta, items = load_evaluation(store, eval_id)
    rows = list_evaluations(store, policy_version=3)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from tepo_agent.errors import StoreError
from tepo_agent.evaluation.calls import CallOutcome
from tepo_agent.evaluation.items import ItemResult
from tepo_agent.evaluation.report import summarize
from tepo_agent.store import TrajectoryStore, from_row


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


def _item_row(eval_id: int, r: ItemResult) -> dict[str, Any]:
    return {
        "evaluation_id": eval_id,
        "task_id": r.task_id,
        "sample": r.sample,
        "suite": r.suite,
        "needs_tool": int(r.needs_tool),
        "score": r.score,
        "answer": r.answer,
        "status": r.status,
        "tool_calls": len(r.calls),
        "calls": json.dumps([c.to_json() for c in r.calls]),
        "policy_version": r.policy_version,
        "entropy_kind": r.entropy_kind,
    }


def save_evaluation(store: TrajectoryStore, items: Sequence[ItemResult], meta: EvalMeta) -> int:
    """Store an evaluation and its items in one transaction; returns its id."""
    summary = summarize(items)

    def insert(db: sqlite_utils.Database) -> int:
        cur = db.conn.execute(
            "INSERT INTO evaluations (policy_version, label, suite, seed, n, samples, "
            "temperature, entropy_kind, config, summary, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                meta.policy_version,
                meta.label,
                meta.suite,
                meta.seed,
                meta.n,
                meta.samples,
                meta.temperature,
                ",".join(summary.entropy_kinds) or None,
                json.dumps(meta.config),
                json.dumps(summary.to_json()),
                time.time(),
            ],
        )
        eval_id = int(cur.lastrowid or 0)
        db.conn.executemany(
            "INSERT INTO evaluation_items (evaluation_id, task_id, sample, suite, needs_tool, "
            "score, answer, status, tool_calls, calls, policy_version, entropy_kind) VALUES "
            "(:evaluation_id, :task_id, :sample, :suite, :needs_tool, :score, :answer, :status, "
            ":tool_calls, :calls, :policy_version, :entropy_kind)",
            [_item_row(eval_id, r) for r in items],
        )
        return eval_id

    return store.write(insert)


def load_evaluation(store: TrajectoryStore, eval_id: int) -> tuple[EvalMeta, list[ItemResult]]:
    """A stored evaluation's settings and item results (in stored order)."""
    rows = store.read("SELECT * FROM evaluations WHERE id = ?", [eval_id])
    if not rows:
        raise StoreError(
            f"no evaluation {eval_id} in {store.path}; list them with list_evaluations"
        )
    meta = from_row(EvalMeta, rows[0], config=json.loads(rows[0]["config"]))
    items = [
        from_row(
            ItemResult,
            r,
            needs_tool=bool(r["needs_tool"]),
            calls=tuple(CallOutcome(**c) for c in json.loads(r["calls"])),
        )
        for r in store.read(
            "SELECT * FROM evaluation_items WHERE evaluation_id = ? ORDER BY rowid", [eval_id]
        )
    ]
    return meta, items


def list_evaluations(
    store: TrajectoryStore, *, policy_version: int | None = None
) -> list[dict[str, Any]]:
    """Stored evaluations (newest last) with their settings and summary, optionally for one
    policy version."""
    where, params = (
        ("WHERE policy_version = ?", [policy_version]) if policy_version is not None else ("", [])
    )
    rows = store.read(f"SELECT * FROM evaluations {where} ORDER BY id", params)
    for row in rows:
        row["config"] = json.loads(row["config"])
        row["summary"] = json.loads(row["summary"])
    return rows


def find_evaluation(
    store: TrajectoryStore, *, policy_version: int, key: str
) -> tuple[EvalMeta, list[ItemResult]] | None:
    """The newest stored evaluation of ``policy_version`` made under the evaluation key ``key``
    (``config["key"]``: e.g. a ``GateConfig.key``, so only comparable evaluations match)."""
    for row in reversed(list_evaluations(store, policy_version=policy_version)):
        if row["config"].get("key") == key:
            return load_evaluation(store, int(row["id"]))
    return None


__all__ = ["EvalMeta", "find_evaluation", "list_evaluations", "load_evaluation", "save_evaluation"]
