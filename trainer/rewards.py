"""TEPO rewards: pure functions from a score and the calls' entropy changes to rewards.

docs/architecture.md, invariant 5. A trajectory's tool calls are its tool turns, in order; call k
carries ΔH_k = H(t_k) − H(t_{k−1}), the change of mean token entropy across the call. ΔH_k < 0
marks an entropy-reducing call (the "good" calls of the TEPO paper, arXiv:2602.02050).

- ``outcome``: R = score (the GRPO baseline).
- ``sparse``: R = score · m/n with m = calls with ΔH_k < 0 and n = all calls. A call whose ΔH is
  unknown (None: no assistant turn followed it, e.g. the run stopped at its tool-call limit)
  counts in n but not in m: a call that led nowhere did not reduce uncertainty. n = 0 gives
  R = score (``no_calls="score"``) or 0 (``no_calls="zero"``); the paper leaves it undefined.
- ``dense``: each call k earns r_k = score · (1 + α·1[ΔH_k < 0]) (unknown ΔH: no bonus), and the
  final answer earns the outcome reward R = score. The advantages module turns the per-call
  rewards into process advantages for the turns that issued the calls.

Entropy changes normally come from the trainer's exact recomputation
(``recompute.exact_turn_entropies``); without it, the live values logged on the tool turns are used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tepo_agent.errors import TrainerError
from tepo_agent.trainer.config import NoCallsPolicy, RewardConfig, RewardKind
from tepo_agent.trajectory import Trajectory


@dataclass(frozen=True)
class TrajectoryReward:
    """The reward of one trajectory.

    Attributes:
        kind: Which reward produced it.
        reward: The scalar trajectory reward R (for ``dense``: the outcome reward of the answer).
        call_rewards: Per-call rewards r_k, one per tool call, in order (``dense`` only; empty
            for the other kinds).
        m: Number of entropy-reducing calls (ΔH_k < 0).
        n: Number of tool calls.
    """

    kind: RewardKind
    reward: float
    call_rewards: tuple[float, ...]
    m: int
    n: int


def _check_score(score: float) -> None:
    if not 0.0 <= score <= 1.0:
        raise TrainerError(f"score must be in [0, 1], got {score}; rescale the verifier's output")


def count_reducing(delta_entropies: Sequence[float | None]) -> int:
    """m: how many calls have a known ΔH_k < 0."""
    return sum(1 for d in delta_entropies if d is not None and d < 0)


def outcome_reward(score: float) -> float:
    """R = score."""
    _check_score(score)
    return float(score)


def sparse_reward(
    score: float, delta_entropies: Sequence[float | None], no_calls: NoCallsPolicy = "score"
) -> float:
    """R = score · m/n; n = 0 gives ``score`` or 0 depending on ``no_calls``."""
    _check_score(score)
    n = len(delta_entropies)
    if n == 0:
        return float(score) if no_calls == "score" else 0.0
    return float(score) * count_reducing(delta_entropies) / n


def dense_call_rewards(
    score: float, delta_entropies: Sequence[float | None], alpha: float
) -> tuple[float, ...]:
    """r_k = score · (1 + α·1[ΔH_k < 0]) for every call k (unknown ΔH: no bonus)."""
    _check_score(score)
    return tuple(
        float(score) * (1.0 + alpha * (1.0 if d is not None and d < 0 else 0.0))
        for d in delta_entropies
    )


def call_delta_entropies(traj: Trajectory) -> list[float | None]:
    """ΔH_k of every tool call as logged live on the tool turns, in call order."""
    return [turn.delta_entropy for turn in traj.turns if turn.role == "tool"]


def trajectory_rewards(
    traj: Trajectory,
    cfg: RewardConfig,
    *,
    delta_entropies: Sequence[float | None] | None = None,
) -> TrajectoryReward:
    """The configured reward of one scored trajectory.

    Args:
        traj: A trajectory with a ``score``.
        cfg: Which reward to compute.
        delta_entropies: ΔH_k per tool call, in call order (from exact recomputation). None uses
            the values logged on the tool turns.

    Raises:
        TrainerError: the trajectory has no score, the score is outside [0, 1], or
            ``delta_entropies`` does not have one entry per tool call.
    """
    if traj.score is None:
        raise TrainerError(
            f"trajectory {traj.id} has no score; score it (verifier or feedback) before training"
        )
    deltas = call_delta_entropies(traj) if delta_entropies is None else list(delta_entropies)
    n = sum(1 for turn in traj.turns if turn.role == "tool")
    if len(deltas) != n:
        raise TrainerError(
            f"trajectory {traj.id} has {n} tool calls but {len(deltas)} entropy changes were "
            f"given; pass one ΔH per tool turn"
        )
    m = count_reducing(deltas)
    score = traj.score
    if cfg.kind == "outcome":
        return TrajectoryReward("outcome", outcome_reward(score), (), m, n)
    if cfg.kind == "sparse":
        return TrajectoryReward("sparse", sparse_reward(score, deltas, cfg.no_calls), (), m, n)
    calls = dense_call_rewards(score, deltas, cfg.alpha)
    return TrajectoryReward("dense", outcome_reward(score), calls, m, n)


__all__ = [
    "TrajectoryReward",
    "call_delta_entropies",
    "count_reducing",
    "dense_call_rewards",
    "outcome_reward",
    "sparse_reward",
    "trajectory_rewards",
]
