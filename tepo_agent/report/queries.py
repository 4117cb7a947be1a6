"""Read-only queries that turn a trajectory store into the report's data (plain JSON values).

Everything here runs on a read-only SQLite connection (:func:`open_readonly`), so the report and
the dashboard can never write to a store that agents and the trainer are writing to. Tables that
an older store or another component may lack (``policy_events``, ``evaluations``) read as empty.

Bounded for large stores: aggregates (per policy version, per tool) are computed in SQL over every
row; only ``sample`` trajectories are read with their tokens.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.report.tokens import TokenDecoder
from tepo_agent.store._codec import decode_floats, decode_ids
from tepo_agent.trajectory import error_kind_from_text as error_kind

CURVE_METRICS: tuple[tuple[str, str], ...] = (
    ("reward_mean", "reward"),
    ("score_mean", "accuracy (mean score)"),
    ("tool_calls_per_trajectory", "tool calls per task"),
    ("entropy_reducing_share", "share of entropy-reducing calls"),
    ("delta_entropy_mean", "mean ΔH"),
    ("kl", "KL"),
    ("clip_frac", "clip fraction"),
    ("grad_norm", "grad norm"),
    ("tokens_per_s", "tokens/s"),
)
"""train_steps metrics drawn as curves: (key in ``metrics``, label)."""

_RESULT_CHARS = 2000  # a sampled trajectory's tool results are cut here; --trajectory shows all


@dataclass(frozen=True)
class SampleFilter:
    """Which trajectories the report shows with their tokens.

    Attributes:
        limit: How many (the most recent that match), at least 1.
        policy_version: Only those sampled by this version.
        min_score, max_score: Only scored ones within [min_score, max_score].
        tool: Only those with a call to this tool.
        group_id: Only this GRPO group.
        trajectory_id: Just this one, in full (other filters are ignored).
    """

    limit: int = 100
    policy_version: int | None = None
    min_score: float | None = None
    max_score: float | None = None
    tool: str | None = None
    group_id: str | None = None
    trajectory_id: str | None = None

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ConfigError(f"the trajectory sample needs limit >= 1, got {self.limit}")


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` (refused if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"no trajectory database at {path}; pass the right --db")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path} read-only: {exc}") from exc
    conn.row_factory = sqlite3.Row
    conn.create_function("error_kind_of", 1, error_kind, deterministic=True)
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _rows(conn: sqlite3.Connection, sql: str, params: list[Any] | tuple = ()) -> list[dict]:
    return [dict(r) for r in conn.execute(sql, params)]


def stamp(conn: sqlite3.Connection) -> str:
    """Changes whenever anything the report shows changes (the dashboard polls it)."""
    parts = [
        "SELECT max(seq), count(*), max(score_seq), total(score), total(reward) FROM trajectories",
        "SELECT max(id) FROM feedback",
        "SELECT max(step) FROM train_steps",
        "SELECT max(updated_at), count(*) FROM policies",
    ]
    tables = _tables(conn)
    parts += [f"SELECT max(id) FROM {t}" for t in ("policy_events", "evaluations") if t in tables]
    return json.dumps([list(conn.execute(sql).fetchone()) for sql in parts])


def policies(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every version with its status, reason and the gate's scalar numbers."""
    out = []
    for row in _rows(conn, "SELECT * FROM policies ORDER BY version"):
        metrics = json.loads(row.pop("metrics") or "{}")
        gate = metrics.get("gate") if isinstance(metrics.get("gate"), dict) else {}
        row["gate"] = {k: v for k, v in gate.items() if isinstance(v, int | float | str)}
        out.append(row)
    return out


def policy_events(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    if "policy_events" not in _tables(conn):
        return []
    rows = _rows(conn, "SELECT version, event, detail, created_at FROM policy_events ORDER BY id")
    for row in rows:
        detail = json.loads(row["detail"] or "{}")
        # the gate's per-item scores can be long; the page shows the scalars
        gate = detail.get("gate")
        if isinstance(gate, dict):
            detail["gate"] = {k: v for k, v in gate.items() if isinstance(v, int | float | str)}
        detail.pop("live_gate", None)
        row["detail"] = detail
    return rows


def version_stats(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per policy version, over every stored trajectory: runs, mean score and reward, calls."""
    return _rows(
        conn,
        "SELECT policy_version AS version, count(*) AS runs, avg(score) AS score, "
        "count(score) AS scored, avg(reward) AS reward, avg(num_tool_calls) AS calls, "
        "total(num_entropy_reducing_calls) / nullif(total(num_tool_calls), 0) AS reducing_share "
        "FROM trajectories GROUP BY policy_version ORDER BY policy_version",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def train_curves(conn: sqlite3.Connection) -> dict[str, Any]:
    """Every train step with the :data:`CURVE_METRICS` it recorded."""
    rows = []
    for r in conn.execute(
        "SELECT step, policy_version, published_version, metrics, created_at FROM train_steps "
        "ORDER BY step"
    ):
        row = dict(r)
        metrics = json.loads(row.pop("metrics") or "{}")
        values = {k: metrics[k] for k, _ in CURVE_METRICS if _is_number(metrics.get(k))}
        rows.append({**row, "values": values})
    present = [[k, label] for k, label in CURVE_METRICS if any(k in r["values"] for r in rows)]
    return {"metrics": present, "steps": rows}


def evaluations(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Stored evaluations (``tepo-agent eval``, the gate, the demo), oldest first; [] if the store
    has no evaluations table."""
    if "evaluations" not in _tables(conn):
        return []
    out = []
    for row in _rows(conn, "SELECT * FROM evaluations ORDER BY id"):
        summary = json.loads(row.get("summary") or "{}")
        acc = summary.get("accuracy")
        acc = acc if isinstance(acc, dict) else {"estimate": acc}
        out.append(
            {
                "id": row.get("id"),
                "version": row.get("policy_version"),
                "label": row.get("label"),
                "suite": row.get("suite"),
                "n": row.get("n"),
                "seed": row.get("seed"),
                "accuracy": acc.get("estimate"),
                "low": acc.get("low"),
                "high": acc.get("high"),
                "calls_per_run": summary.get("calls_per_run"),
                "format_error_rate": summary.get("format_error_rate"),
                "reducing_share": summary.get("entropy_reducing_share"),
                "mean_delta_entropy": summary.get("mean_delta_entropy"),
                "created_at": row.get("created_at"),
            }
        )
    return out


def _error_kind_sql(conn: sqlite3.Connection) -> str:
    if "error_kind" in _columns(conn, "turns"):
        return "coalesce(error_kind, error_kind_of(tool_error))"
    return "error_kind_of(tool_error)"


def tool_stats(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per tool: calls, errors by kind, mean ΔH, share of calls that reduced entropy, latency."""
    stats = _rows(
        conn,
        "SELECT coalesce(tool_name, '(unparsed)') AS name, count(*) AS calls, "
        "avg(delta_entropy) AS mean_delta_entropy, count(delta_entropy) AS known, "
        "1.0 * sum(delta_entropy < 0) / nullif(count(delta_entropy), 0) AS reducing_share, "
        "avg(tool_latency_s) AS mean_latency_s "
        "FROM turns WHERE role = 'tool' GROUP BY 1 ORDER BY calls DESC",
    )
    errors: dict[str, dict[str, int]] = {}
    for r in conn.execute(
        f"SELECT coalesce(tool_name, '(unparsed)'), {_error_kind_sql(conn)}, count(*) "
        "FROM turns WHERE role = 'tool' AND tool_error IS NOT NULL GROUP BY 1, 2"
    ):
        errors.setdefault(r[0], {})[r[1]] = r[2]
    for s in stats:
        s["errors"] = errors.get(s["name"], {})
    return stats


def _where(f: SampleFilter) -> tuple[str, list[Any]]:
    where, params = [], []
    for clause, value in (
        ("policy_version = ?", f.policy_version),
        ("score >= ?", f.min_score),
        ("score <= ?", f.max_score),
        ("group_id = ?", f.group_id),
        ("id IN (SELECT trajectory_id FROM turns WHERE role = 'tool' AND tool_name = ?)", f.tool),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    return (" WHERE " + " AND ".join(where) if where else ""), params


def count_matching(conn: sqlite3.Connection, f: SampleFilter) -> int:
    """How many stored trajectories the filter matches (the sample shows at most ``limit``)."""
    if f.trajectory_id is not None:
        return 1
    where, params = _where(f)
    return int(conn.execute("SELECT count(*) FROM trajectories" + where, params).fetchone()[0])


def _sample_ids(conn: sqlite3.Connection, f: SampleFilter) -> list[str]:
    if f.trajectory_id is not None:
        row = conn.execute("SELECT id FROM trajectories WHERE id = ?", [f.trajectory_id]).fetchone()
        if row is None:
            raise StoreError(f"no trajectory with id {f.trajectory_id!r} in the store")
        return [row[0]]
    where, params = _where(f)
    sql = f"SELECT id FROM trajectories{where} ORDER BY seq DESC LIMIT ?"
    return [r[0] for r in conn.execute(sql, [*params, f.limit])]


def _turn_json(t: sqlite3.Row, decoder: TokenDecoder, full: bool, kinds: bool) -> dict[str, Any]:
    if t["role"] == "assistant":
        ents = decode_floats(t["entropies"]) or []
        return {
            "role": "assistant",
            "v": t["policy_version"],
            "h": t["entropy_mean"],
            "kind": t["entropy_kind"],
            "finish": t["finish_reason"],
            "pieces": decoder.pieces(decode_ids(t["token_ids"])),
            "ent": [round(h, 4) for h in ents],
        }
    result = t["tool_result"]
    if result is not None and not full and len(result) > _RESULT_CHARS:
        result = result[:_RESULT_CHARS] + f"… ({len(result) - _RESULT_CHARS} more characters)"
    error = t["tool_error"]
    kind = t["error_kind"] if kinds and t["error_kind"] else error_kind(error)
    return {
        "role": "tool",
        "name": t["tool_name"],
        "args": json.loads(t["tool_args"]) if t["tool_args"] is not None else None,
        "result": result,
        "error": error,
        "error_kind": kind,
        "latency": t["tool_latency_s"],
        "dh": t["delta_entropy"],
    }


def trajectory_sample(
    conn: sqlite3.Connection, f: SampleFilter, decoder: TokenDecoder
) -> list[dict[str, Any]]:
    """The chosen trajectories (newest first) with every turn and per-token entropy."""
    ids = _sample_ids(conn, f)
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    heads = {
        r["id"]: r
        for r in _rows(
            conn,
            "SELECT id, seq, task, group_id, policy_version, status, score, reward, answer, "
            f"num_tool_calls, created_at FROM trajectories WHERE id IN ({marks})",
            ids,
        )
    }
    kinds = "error_kind" in _columns(conn, "turns")
    turns: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    for t in conn.execute(
        f"SELECT * FROM turns WHERE trajectory_id IN ({marks}) ORDER BY trajectory_id, idx", ids
    ):
        turns[t["trajectory_id"]].append(
            _turn_json(t, decoder, full=f.trajectory_id is not None, kinds=kinds)
        )
    return [{**heads[i], "turns": turns[i]} for i in ids]
