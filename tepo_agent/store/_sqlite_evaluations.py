"""Stored evaluations on SQLite (the ``evaluations`` and ``evaluation_items`` tables).

An evaluation and its items are inserted in one transaction; items come back in the order they
were stored (``rowid``). A file from before the tables existed (opened read-only by the report)
reads as having no evaluations.
"""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Sequence
from typing import Any

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.store._codec import from_row
from tepo_agent.store._side_records import EvaluationItemRecord, EvaluationRecord
from tepo_agent.store._sqlite_base import SqliteTables

_ITEM_COLUMNS = (
    "evaluation_id, task_id, sample, suite, needs_tool, score, answer, status, tool_calls, "
    "calls, policy_version, entropy_kind"
)


def _evaluation(row: dict[str, Any]) -> EvaluationRecord:
    return from_row(
        EvaluationRecord,
        row,
        config=json.loads(row["config"] or "{}"),
        summary=json.loads(row["summary"] or "{}"),
    )


def _item(row: dict[str, Any]) -> EvaluationItemRecord:
    return from_row(
        EvaluationItemRecord,
        row,
        needs_tool=bool(row["needs_tool"]),
        calls=json.loads(row["calls"]),
    )


class EvaluationTables(SqliteTables):
    """:class:`~tepo_agent.store.protocol.EvaluationOps` on SQLite."""

    def save_evaluation(
        self, evaluation: EvaluationRecord, items: Sequence[EvaluationItemRecord]
    ) -> int:
        e = evaluation
        head = [e.policy_version, e.label, e.suite, e.seed, e.n, e.samples, e.temperature,
                e.entropy_kind, json.dumps(e.config), json.dumps(e.summary),
                time.time()]  # fmt: skip

        def insert(db: sqlite_utils.Database) -> int:
            cur = db.conn.execute(
                "INSERT INTO evaluations (policy_version, label, suite, seed, n, samples, "
                "temperature, entropy_kind, config, summary, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                head,
            )
            eval_id = int(cur.lastrowid or 0)
            db.conn.executemany(
                f"INSERT INTO evaluation_items ({_ITEM_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        eval_id,
                        r.task_id,
                        r.sample,
                        r.suite,
                        int(r.needs_tool),
                        r.score,
                        r.answer,
                        r.status,
                        r.tool_calls,
                        json.dumps(r.calls),
                        r.policy_version,
                        r.entropy_kind,
                    )
                    for r in items
                ],
            )
            return eval_id

        return int(self.write(insert))

    def evaluation(
        self, evaluation_id: int
    ) -> tuple[EvaluationRecord, builtins.list[EvaluationItemRecord]] | None:
        rows = self.read("SELECT * FROM evaluations WHERE id = ?", [evaluation_id])
        if not rows:
            return None
        items = self.read(
            "SELECT * FROM evaluation_items WHERE evaluation_id = ? ORDER BY rowid",
            [evaluation_id],
        )
        return _evaluation(rows[0]), [_item(r) for r in items]

    def evaluations(self, policy_version: int | None = None) -> builtins.list[EvaluationRecord]:
        if "evaluations" not in self._tables():
            return []
        where, params = (
            ("WHERE policy_version = ?", [policy_version])
            if policy_version is not None
            else ("", [])
        )
        rows = self.read(f"SELECT * FROM evaluations {where} ORDER BY id", params)
        return [_evaluation(r) for r in rows]
