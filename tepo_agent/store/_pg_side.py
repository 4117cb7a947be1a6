"""Evaluations, served responses and the report's aggregates on PostgreSQL (parts of
:class:`PostgresStore`): the same records and the same meaning as the SQLite store's, with the
aggregates computed by the database."""

from __future__ import annotations

import builtins
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from tepo_agent.store._side_records import (
    EvaluationItemRecord,
    EvaluationRecord,
    ServedResponse,
    ToolStats,
    VersionStats,
)

_EVALUATION_COLUMNS = (
    "policy_version, label, suite, seed, n, samples, temperature, entropy_kind, config, summary, "
    "created_at"
)
_ITEM_COLUMNS = (
    "task_id, sample, suite, needs_tool, score, answer, status, tool_calls, calls, "
    "policy_version, entropy_kind"
)

# A failed tool call's kind for a row that does not carry one: the same words migration 3
# back-fills from (tepo_agent/store/schema.py).
_ERROR_KIND = """coalesce(error_kind, CASE
    WHEN substr(tool_error, 1, 26) = 'error: malformed tool call' THEN 'malformed'
    WHEN substr(tool_error, 1, 19) = 'error: unknown tool' THEN 'unknown_tool'
    WHEN substr(tool_error, 1, 16) = 'error: timed out'
        OR substr(tool_error, 1, 19) = 'error: TimeoutError' THEN 'timeout'
    ELSE 'tool_error' END)"""


def _float(value: Any) -> float | None:
    """NUMERIC aggregates (avg of integers) as floats."""
    return None if value is None else float(value)


def _evaluation(row: dict[str, Any]) -> EvaluationRecord:
    return EvaluationRecord(
        **{**row, "config": json.loads(row["config"]), "summary": json.loads(row["summary"])}
    )


def _item(row: dict[str, Any]) -> EvaluationItemRecord:
    return EvaluationItemRecord(
        **{**row, "needs_tool": bool(row["needs_tool"]), "calls": json.loads(row["calls"])}
    )


class PgSideOps:
    """``EvaluationOps``, ``ServedResponseOps`` and ``ReportOps`` of the protocol."""

    _transaction: Callable[..., Any]
    _read: Callable[..., builtins.list[dict[str, Any]]]

    # -- evaluations ---------------------------------------------------------------------------

    def save_evaluation(
        self, evaluation: EvaluationRecord, items: Sequence[EvaluationItemRecord]
    ) -> int:
        record = replace(evaluation, created_at=time.time())
        head = [getattr(record, c) for c in _EVALUATION_COLUMNS.split(", ")]
        head[8:10] = [json.dumps(record.config), json.dumps(record.summary)]
        rows = [
            [*(getattr(i, c) for c in _ITEM_COLUMNS.split(", ")[:8]), json.dumps(i.calls),
             i.policy_version, i.entropy_kind]
            for i in items
        ]  # fmt: skip
        for row in rows:
            row[3] = int(row[3])

        def insert(conn: Any) -> int:
            marks = ", ".join(["%s"] * len(head))
            eval_id = int(
                conn.execute(
                    f"INSERT INTO evaluations ({_EVALUATION_COLUMNS}) VALUES ({marks}) "
                    "RETURNING id",
                    head,
                ).fetchone()["id"]
            )
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        f"INSERT INTO evaluation_items (evaluation_id, {_ITEM_COLUMNS}) "
                        f"VALUES (%s, {', '.join(['%s'] * 11)})",
                        [[eval_id, *row] for row in rows],
                    )
            return eval_id

        return int(self._transaction(insert))

    def evaluation(
        self, evaluation_id: int
    ) -> tuple[EvaluationRecord, builtins.list[EvaluationItemRecord]] | None:
        def read(conn: Any) -> Any:
            row = conn.execute("SELECT * FROM evaluations WHERE id = %s", [evaluation_id])
            head = row.fetchone()
            if head is None:
                return None
            items = conn.execute(
                f"SELECT {_ITEM_COLUMNS} FROM evaluation_items WHERE evaluation_id = %s "
                "ORDER BY position",
                [evaluation_id],
            ).fetchall()
            return _evaluation(head), [_item(r) for r in items]

        return self._transaction(read)  # type: ignore[no-any-return]

    def evaluations(self, policy_version: int | None = None) -> builtins.list[EvaluationRecord]:
        where, params = (
            ("WHERE policy_version = %s", [policy_version]) if policy_version is not None
            else ("", [])
        )  # fmt: skip
        rows = self._read(f"SELECT * FROM evaluations {where} ORDER BY id", params)
        return [_evaluation(r) for r in rows]

    # -- served responses ----------------------------------------------------------------------

    def record_served(self, responses: Sequence[ServedResponse]) -> None:
        if not responses:
            return
        rows = [
            [r.response_id, r.trajectory_id, r.session_id, r.owner, r.created_at] for r in responses
        ]

        def upsert(conn: Any) -> None:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO served_responses (response_id, trajectory_id, session_id, "
                    "owner, created_at) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (response_id, trajectory_id) DO UPDATE SET "
                    "session_id = EXCLUDED.session_id, owner = EXCLUDED.owner, "
                    "created_at = EXCLUDED.created_at",
                    rows,
                )

        self._transaction(upsert)

    # -- report --------------------------------------------------------------------------------

    def report_stamp(self) -> str:
        row = self._read(
            "SELECT (SELECT json_build_array(max(seq), count(*), max(score_seq), sum(score), "
            "sum(reward)) FROM trajectories) AS trajectories, "
            "(SELECT max(id) FROM feedback) AS feedback, "
            "(SELECT max(step) FROM train_steps) AS steps, "
            "(SELECT json_build_array(max(updated_at), count(*)) FROM policies) AS policies, "
            "(SELECT max(id) FROM policy_events) AS events, "
            "(SELECT max(id) FROM evaluations) AS evaluations"
        )[0]
        return json.dumps(row, sort_keys=True, default=str)

    def version_stats(self) -> builtins.list[VersionStats]:
        rows = self._read(
            "SELECT policy_version AS version, count(*) AS runs, avg(score) AS score, "
            "count(score) AS scored, avg(reward) AS reward, avg(num_tool_calls) AS calls, "
            "sum(num_entropy_reducing_calls)::float8 / nullif(sum(num_tool_calls), 0) "
            "AS reducing_share FROM trajectories GROUP BY policy_version "
            "ORDER BY policy_version NULLS FIRST"
        )
        return [
            VersionStats(
                version=r["version"], runs=int(r["runs"]), score=_float(r["score"]),
                scored=int(r["scored"]), reward=_float(r["reward"]), calls=_float(r["calls"]),
                reducing_share=_float(r["reducing_share"]),
            )
            for r in rows
        ]  # fmt: skip

    def tool_stats(self) -> builtins.list[ToolStats]:
        stats = self._read(
            "SELECT coalesce(tool_name, '(unparsed)') AS name, count(*) AS calls, "
            "avg(delta_entropy) AS mean_delta_entropy, count(delta_entropy) AS known, "
            "(count(*) FILTER (WHERE delta_entropy < 0))::float8 "
            "/ nullif(count(delta_entropy), 0) AS reducing_share, "
            "avg(tool_latency_s) AS mean_latency_s "
            "FROM turns WHERE role = 'tool' GROUP BY 1 ORDER BY calls DESC, name"
        )
        errors: dict[str, dict[str, int]] = {}
        for r in self._read(
            f"SELECT coalesce(tool_name, '(unparsed)') AS name, {_ERROR_KIND} AS kind, "
            "count(*) AS n FROM turns WHERE role = 'tool' AND tool_error IS NOT NULL "
            "GROUP BY 1, 2"
        ):
            errors.setdefault(r["name"], {})[r["kind"]] = int(r["n"])
        return [
            ToolStats(
                name=s["name"], calls=int(s["calls"]),
                mean_delta_entropy=_float(s["mean_delta_entropy"]), known=int(s["known"]),
                reducing_share=_float(s["reducing_share"]),
                mean_latency_s=_float(s["mean_latency_s"]), errors=errors.get(s["name"], {}),
            )
            for s in stats
        ]  # fmt: skip
