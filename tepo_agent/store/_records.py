"""What the store returns besides :class:`Trajectory`, and the row <-> record conversions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tepo_agent.store._codec import (
    decode_floats,
    decode_ids,
    dump_json,
    encode_floats,
    encode_ids,
    finite_or_none,
    from_row,
    load_json,
)
from tepo_agent.trajectory import Trajectory, Turn


@dataclass(frozen=True)
class TrajectorySummary:
    """One row of ``TrajectoryStore.list``: a trajectory without its turns.

    ``seq`` is the write order (unique, increasing); ``score_seq`` the order in which the
    trajectory became scored (None while unscored), which is what the trainer's cursor follows.
    """

    id: str
    seq: int
    score_seq: int | None
    group_id: str | None
    task: str
    task_id: str | None
    app_tag: str | None
    policy_version: int | None
    answer: str | None
    status: str
    score: float | None
    reward: float | None
    num_turns: int
    num_tokens: int
    num_tool_calls: int
    num_entropy_reducing_calls: int
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TrajectoryGroup:
    """Scored trajectories that share a ``group_id`` (GRPO needs them together).

    An ungrouped trajectory (``group_id`` None) is a group of one. ``seq`` is the highest
    ``score_seq`` among the members: pass the maximum over a batch of groups back to
    ``scored_since`` as the next cursor.
    """

    group_id: str | None
    members: list[Trajectory]
    seq: int

    def __len__(self) -> int:
        return len(self.members)


@dataclass(frozen=True)
class TrainStep:
    """One recorded trainer step: where its cursor stood and what it measured."""

    step: int
    policy_version: int | None
    published_version: int | None
    cursor_seq: int
    metrics: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0


SUMMARY_COLUMNS = (
    "id, seq, score_seq, group_id, task, task_id, app_tag, policy_version, answer, status, "
    "score, reward, num_turns, num_tokens, num_tool_calls, num_entropy_reducing_calls, created_at"
)


def summary_from_row(row: dict[str, Any]) -> TrajectorySummary:
    return from_row(TrajectorySummary, row)


def trajectory_row(traj: Trajectory, *, seq: int, score_seq: int | None, now: float) -> dict:
    """The ``trajectories`` row for ``traj`` (counts derived from its turns)."""
    tool_turns = traj.tool_turns()
    return {
        "id": traj.id,
        "seq": seq,
        "score_seq": score_seq,
        "group_id": traj.group_id,
        "task": traj.task,
        "task_id": traj.task_id,
        "app_tag": traj.app_tag,
        "policy_version": traj.policy_version,
        "prompt_token_ids": encode_ids(traj.prompt_token_ids),
        "answer": traj.answer,
        "status": traj.status,
        "score": finite_or_none(traj.score, "score"),
        "reward": None,
        "num_turns": len(traj.turns),
        "num_tokens": len(traj.prompt_token_ids) + sum(len(t.token_ids) for t in traj.turns),
        "num_tool_calls": len(tool_turns),
        "num_entropy_reducing_calls": sum(
            1 for t in tool_turns if t.delta_entropy is not None and t.delta_entropy < 0
        ),
        "metadata": dump_json(traj.metadata or {}),
        "created_at": traj.created_at if traj.created_at is not None else now,
    }


def turn_row(trajectory_id: str, idx: int, turn: Turn) -> dict:
    """The ``turns`` row for one turn; token arrays as BLOBs."""
    return {
        "trajectory_id": trajectory_id,
        "idx": idx,
        "role": turn.role,
        "text": turn.text,
        "token_ids": encode_ids(turn.token_ids),
        "logprobs": encode_floats(turn.logprobs),
        "entropies": encode_floats(turn.entropies),
        "entropy_lower": encode_floats(turn.entropy_lower),
        "entropy_upper": encode_floats(turn.entropy_upper),
        "entropy_kind": turn.entropy_kind,
        "policy_version": turn.policy_version,
        "finish_reason": turn.finish_reason,
        "entropy_mean": finite_or_none(turn.entropy_mean, "entropy_mean"),
        "replica": turn.replica,
        "tool_call_id": turn.tool_call_id,
        "tool_name": turn.tool_name,
        "tool_args": dump_json(turn.tool_args),
        "tool_result": turn.tool_result,
        "tool_error": turn.tool_error,
        "error_kind": turn.error_kind,
        "tool_latency_s": finite_or_none(turn.tool_latency_s, "tool_latency_s"),
        "delta_entropy": finite_or_none(turn.delta_entropy, "delta_entropy"),
    }


def turn_from_row(row: dict[str, Any]) -> Turn:
    return from_row(
        Turn,
        row,
        token_ids=decode_ids(row["token_ids"]),
        logprobs=decode_floats(row["logprobs"]),
        entropies=decode_floats(row["entropies"]),
        entropy_lower=decode_floats(row["entropy_lower"]),
        entropy_upper=decode_floats(row["entropy_upper"]),
        tool_args=load_json(row["tool_args"]),
    )


def trajectory_from_rows(row: dict[str, Any], turn_rows: list[dict[str, Any]]) -> Trajectory:
    return from_row(
        Trajectory,
        row,
        prompt_token_ids=decode_ids(row["prompt_token_ids"]),
        turns=[turn_from_row(r) for r in turn_rows],
        metadata=load_json(row["metadata"]) or {},
    )
