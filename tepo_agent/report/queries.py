"""Read-only queries that turn a trajectory store into the report's data (plain JSON values).

Everything here reads a store opened read-only (:func:`open_readonly`), so the report and the
dashboard can never write to a store that agents and the trainer are writing to. What an older
store lacks (``policy_events``, ``evaluations``) reads as empty.

Bounded for large stores: aggregates (per policy version, per tool) are computed by the store's
database over every row (:class:`~tepo_agent.store.protocol.ReportOps`); only ``sample``
trajectories are read with their tokens.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.report.tokens import TokenDecoder
from tepo_agent.store import Store, TrajectorySummary, open_store
from tepo_agent.trajectory import Turn
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


def open_readonly(target: str | os.PathLike[str]) -> Store:
    """The store at ``target`` (a path or URL) opened read-only (refused if it does not exist)."""
    return open_store(target, create=False, read_only=True)


def _filters(f: SampleFilter) -> dict[str, Any]:
    """``f`` as the store's filter keywords."""
    return {"policy_version": f.policy_version, "min_score": f.min_score,
            "max_score": f.max_score, "tool": f.tool, "group_id": f.group_id}  # fmt: skip


def stamp(store: Store) -> str:
    """Changes whenever anything the report shows changes (the dashboard polls it)."""
    return store.report_stamp()


def policies(store: Store) -> list[dict[str, Any]]:
    """Every version with its status, reason and the gate's scalar numbers."""
    out = []
    for record in store.policies():
        row = asdict(record)
        metrics = row.pop("metrics") or {}
        gate = metrics.get("gate") if isinstance(metrics.get("gate"), dict) else {}
        row["gate"] = {k: v for k, v in gate.items() if isinstance(v, int | float | str)}
        out.append(row)
    return out


def policy_events(store: Store) -> list[dict[str, Any]]:
    rows = []
    for e in store.policy_events():
        detail = dict(e.detail)
        # the gate's per-item scores can be long; the page shows the scalars
        gate = detail.get("gate")
        if isinstance(gate, dict):
            detail["gate"] = {k: v for k, v in gate.items() if isinstance(v, int | float | str)}
        detail.pop("live_gate", None)
        rows.append(
            {"version": e.version, "event": e.event, "detail": detail, "created_at": e.created_at}
        )
    return rows


def version_stats(store: Store) -> list[dict[str, Any]]:
    """Per policy version, over every stored trajectory: runs, mean score and reward, calls."""
    return [asdict(v) for v in store.version_stats()]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def train_curves(store: Store) -> dict[str, Any]:
    """Every train step with the :data:`CURVE_METRICS` it recorded."""
    rows = []
    for s in store.train_steps():
        values = {k: s.metrics[k] for k, _ in CURVE_METRICS if _is_number(s.metrics.get(k))}
        rows.append({"step": s.step, "policy_version": s.policy_version,
                     "published_version": s.published_version, "created_at": s.created_at,
                     "values": values})  # fmt: skip
    present = [[k, label] for k, label in CURVE_METRICS if any(k in r["values"] for r in rows)]
    return {"metrics": present, "steps": rows}


def evaluations(store: Store) -> list[dict[str, Any]]:
    """Stored evaluations (``tepo-agent eval``, the gate, the demo), oldest first; [] if the store
    has no evaluations table."""
    out = []
    for e in store.evaluations():
        acc = e.summary.get("accuracy")
        acc = acc if isinstance(acc, dict) else {"estimate": acc}
        out.append(
            {
                "id": e.id,
                "version": e.policy_version,
                "label": e.label,
                "suite": e.suite,
                "n": e.n,
                "seed": e.seed,
                "accuracy": acc.get("estimate"),
                "low": acc.get("low"),
                "high": acc.get("high"),
                "calls_per_run": e.summary.get("calls_per_run"),
                "format_error_rate": e.summary.get("format_error_rate"),
                "reducing_share": e.summary.get("entropy_reducing_share"),
                "mean_delta_entropy": e.summary.get("mean_delta_entropy"),
                "created_at": e.created_at,
            }
        )
    return out


def tool_stats(store: Store) -> list[dict[str, Any]]:
    """Per tool: calls, errors by kind, mean ΔH, share of calls that reduced entropy, latency."""
    return [asdict(t) for t in store.tool_stats()]


def count_matching(store: Store, f: SampleFilter) -> int:
    """How many stored trajectories the filter matches (the sample shows at most ``limit``)."""
    if f.trajectory_id is not None:
        return 1
    return store.count(**_filters(f))


def _sample(store: Store, f: SampleFilter) -> list[TrajectorySummary]:
    if f.trajectory_id is not None:
        one = store.list(trajectory_id=f.trajectory_id, limit=1)
        if not one:
            raise StoreError(f"no trajectory with id {f.trajectory_id!r} in {store.location}")
        return one
    return store.list(newest_first=True, limit=f.limit, **_filters(f))


def _turn_json(t: Turn, decoder: TokenDecoder, full: bool) -> dict[str, Any]:
    if t.role == "assistant":
        return {
            "role": "assistant",
            "v": t.policy_version,
            "h": t.entropy_mean,
            "kind": t.entropy_kind,
            "finish": t.finish_reason,
            "pieces": decoder.pieces(t.token_ids),
            "ent": [round(h, 4) for h in t.entropies or []],
        }
    result = t.tool_result
    if result is not None and not full and len(result) > _RESULT_CHARS:
        result = result[:_RESULT_CHARS] + f"… ({len(result) - _RESULT_CHARS} more characters)"
    return {
        "role": "tool",
        "name": t.tool_name,
        "args": t.tool_args,
        "result": result,
        "error": t.tool_error,
        "error_kind": t.error_kind or error_kind(t.tool_error),
        "latency": t.tool_latency_s,
        "dh": t.delta_entropy,
    }


_HEAD = ("id", "seq", "task", "group_id", "policy_version", "status", "score", "reward", "answer",
         "num_tool_calls", "created_at")  # fmt: skip


def trajectory_sample(store: Store, f: SampleFilter, decoder: TokenDecoder) -> list[dict[str, Any]]:
    """The chosen trajectories (newest first) with every turn and per-token entropy."""
    out = []
    for summary in _sample(store, f):
        head = {k: getattr(summary, k) for k in _HEAD}
        turns = store.get(summary.id).turns
        full = f.trajectory_id is not None
        out.append({**head, "turns": [_turn_json(t, decoder, full) for t in turns]})
    return out
