"""TEPO rewards against hand-computed tables (docs/architecture.md, invariant 5)."""

from __future__ import annotations

import pytest

from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.config import RewardConfig
from tepo_agent.trainer.rewards import (
    dense_call_rewards,
    outcome_reward,
    sparse_reward,
    trajectory_rewards,
)
from tepo_agent.trajectory import Trajectory, Turn


def _traj(score: float | None, deltas: list[float | None]) -> Trajectory:
    """t_0 (call) env t_1 (call) env ... t_K: one assistant turn per call plus the answer."""
    turns: list[Turn] = []
    for d in deltas:
        turns.append(Turn("assistant", [5, 6], logprobs=[-0.1, -0.2], policy_version=0))
        turns.append(Turn("tool", [7], delta_entropy=d))
    turns.append(Turn("assistant", [8], logprobs=[-0.3], policy_version=0))
    return Trajectory(task="q", prompt_token_ids=[1, 2], turns=turns, score=score)


# score, ΔH per call, expected sparse R (no_calls="score")
SPARSE_TABLE = [
    (1.0, [-0.5, 0.2], 0.5),  # m=1, n=2 → 1·1/2
    (1.0, [-0.5, -0.1, 0.3], 2 / 3),  # m=2, n=3
    (0.5, [-0.5, -0.1], 0.5),  # all reducing → score
    (0.8, [0.1, 0.0], 0.0),  # ΔH = 0 is not a reduction → m=0
    (1.0, [-0.2, None], 0.5),  # unknown ΔH counts in n, not m
    (0.0, [-1.0], 0.0),  # wrong answer earns nothing however good the calls
    (0.7, [], 0.7),  # no calls → score
]


@pytest.mark.parametrize(("score", "deltas", "expected"), SPARSE_TABLE)
def test_sparse_reward_matches_hand_table(
    score: float, deltas: list[float | None], expected: float
) -> None:
    assert sparse_reward(score, deltas) == pytest.approx(expected)


def test_sparse_reward_with_no_calls_zero_policy_gives_zero() -> None:
    assert sparse_reward(0.7, [], no_calls="zero") == 0.0
    assert sparse_reward(1.0, [-0.1], no_calls="zero") == 1.0


# score, α, ΔH per call, expected r_k
DENSE_TABLE = [
    (1.0, 1.0, [-0.5, 0.2], (2.0, 1.0)),  # 1·(1+1), 1·(1+0)
    (0.5, 1.0, [-0.5, -0.1], (1.0, 1.0)),
    (0.5, 0.5, [-0.5, 0.3, None], (0.75, 0.5, 0.5)),  # unknown ΔH: no bonus
    (0.0, 2.0, [-1.0], (0.0,)),
    (1.0, 1.0, [], ()),
]


@pytest.mark.parametrize(("score", "alpha", "deltas", "expected"), DENSE_TABLE)
def test_dense_call_rewards_match_hand_table(
    score: float, alpha: float, deltas: list[float | None], expected: tuple[float, ...]
) -> None:
    assert dense_call_rewards(score, deltas, alpha) == pytest.approx(expected)


def test_outcome_reward_is_the_score() -> None:
    assert outcome_reward(0.25) == 0.25


def test_trajectory_rewards_reads_logged_delta_entropies() -> None:
    traj = _traj(1.0, [-0.5, 0.2, -0.1])
    sparse = trajectory_rewards(traj, RewardConfig(kind="sparse"))
    assert (sparse.reward, sparse.m, sparse.n, sparse.call_rewards) == (
        pytest.approx(2 / 3),
        2,
        3,
        (),
    )
    dense = trajectory_rewards(traj, RewardConfig(kind="dense", alpha=0.5))
    assert dense.reward == 1.0  # the answer turn's outcome reward
    assert dense.call_rewards == pytest.approx((1.5, 1.0, 1.5))
    outcome = trajectory_rewards(traj, RewardConfig(kind="outcome"))
    assert outcome.reward == 1.0 and outcome.kind == "outcome"


def test_trajectory_rewards_prefers_given_exact_delta_entropies() -> None:
    traj = _traj(1.0, [-0.5, 0.2])  # live estimate says call 1 reduced entropy
    exact = trajectory_rewards(traj, RewardConfig(), delta_entropies=[0.1, 0.2])
    assert exact.reward == 0.0 and exact.m == 0


def test_trajectory_rewards_rejects_unscored_and_misaligned_input() -> None:
    with pytest.raises(TrainerError, match="no score"):
        trajectory_rewards(_traj(None, [-0.1]), RewardConfig())
    with pytest.raises(TrainerError, match="2 tool calls but 1"):
        trajectory_rewards(_traj(1.0, [-0.1, 0.1]), RewardConfig(), delta_entropies=[-0.1])
    with pytest.raises(TrainerError, match=r"\[0, 1\]"):
        trajectory_rewards(_traj(1.5, []), RewardConfig())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "shaped"},
        {"alpha": -1.0},
        {"alpha": float("nan")},
        {"no_calls": "one"},
        {"entropy_window": 0},
    ],
)
def test_reward_config_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RewardConfig(**kwargs)  # type: ignore[arg-type]
