"""Group-relative advantages and their per-token layout, against hand-computed tables."""

from __future__ import annotations

import pytest

from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.advantages import compute_advantages, normalize_group
from tepo_agent.trainer.config import AdvantageConfig
from tepo_agent.trainer.rewards import TrajectoryReward
from tepo_agent.trajectory import Trajectory, Turn


def _asst(ids: list[int]) -> Turn:
    return Turn("assistant", ids, logprobs=[-0.5] * len(ids), policy_version=0)


def _tool(ids: list[int]) -> Turn:
    return Turn("tool", ids)


def _one_call(group: str | None) -> Trajectory:
    """prompt [1,2,3] | t_0 [10,11] | env [20,21,22] | t_1 [12] (answer)."""
    return Trajectory(
        task="q",
        prompt_token_ids=[1, 2, 3],
        turns=[_asst([10, 11]), _tool([20, 21, 22]), _asst([12])],
        group_id=group,
    )


def _scalar(r: float) -> TrajectoryReward:
    return TrajectoryReward("sparse", r, (), 0, 1)


# values, normalize, expected (eps = 1e-6; std is the population std)
NORMALIZE_TABLE = [
    # mean 0.5, std sqrt(0.125) = 0.3535534 → ±0.5/0.3535534 = ±1.4142136
    ([1.0, 0.0, 0.5, 0.5], "group_std", [1.4142096, -1.4142096, 0.0, 0.0]),
    ([1.0, 0.0, 0.5, 0.5], "group_mean_only", [0.5, -0.5, 0.0, 0.0]),
    # mean 1, std sqrt(2/3) = 0.8164966 → (0−1)/0.8164966 = −1.2247449
    ([0.0, 1.0, 2.0], "group_std", [-1.2247434, 0.0, 1.2247434]),
    ([0.3, 0.3, 0.3], "group_std", [0.0, 0.0, 0.0]),
]


@pytest.mark.parametrize(("values", "normalize", "expected"), NORMALIZE_TABLE)
def test_normalize_group_matches_hand_table(
    values: list[float], normalize: str, expected: list[float]
) -> None:
    got, _ = normalize_group(values, normalize, 1e-6)  # type: ignore[arg-type]
    assert got == pytest.approx(expected, abs=1e-6)


def test_zero_variance_group_gets_exact_zeros_and_is_counted() -> None:
    got, flat = normalize_group([1.0, 1.0, 1.0], "group_std", 1e-6)
    assert got == [0.0, 0.0, 0.0] and flat
    trajs = [_one_call("g"), _one_call("g"), _one_call("h"), _one_call("h")]
    out = compute_advantages(trajs, [_scalar(r) for r in (1, 1, 0, 1)], AdvantageConfig())
    assert out.zero_variance_groups == 1 and out.groups == 2
    assert out.per_trajectory[0].zero_signal and out.per_trajectory[1].zero_signal
    assert not out.per_trajectory[2].zero_signal


def test_scalar_advantage_covers_assistant_tokens_only() -> None:
    trajs = [_one_call("g"), _one_call("g")]
    cfg = AdvantageConfig(normalize="group_mean_only")
    out = compute_advantages(trajs, [_scalar(1.0), _scalar(0.0)], cfg)
    first = out.per_trajectory[0]
    #              prompt        t_0          env           t_1
    assert first.advantages == (0, 0, 0, 0.5, 0.5, 0, 0, 0, 0.5)
    assert first.loss_mask == (0, 0, 0, 1, 1, 0, 0, 0, 1)
    assert out.per_trajectory[1].advantages == (0, 0, 0, -0.5, -0.5, 0, 0, 0, -0.5)
    assert len(first.advantages) == len(trajs[0].full_token_ids())


def _dense_group() -> tuple[list[Trajectory], list[TrajectoryReward]]:
    # A: t_0 →call 1→ t_1 →call 2→ t_2 (answer); score 1, call rewards (2, 1)
    a = Trajectory(
        task="q",
        prompt_token_ids=[1],
        turns=[_asst([10]), _tool([20]), _asst([11]), _tool([21]), _asst([12])],
        group_id="g",
    )
    # B: t_0 issues two parallel calls (the second tool turn has no tokens) → t_1 (answer);
    # score 0.5, call rewards (1, 1)
    b = Trajectory(
        task="q",
        prompt_token_ids=[1],
        turns=[_asst([10, 13]), _tool([20]), _tool([]), _asst([14])],
        group_id="g",
    )
    rewards = [
        TrajectoryReward("dense", 1.0, (2.0, 1.0), 1, 2),
        TrajectoryReward("dense", 0.5, (1.0, 1.0), 0, 2),
    ]
    return [a, b], rewards


def test_dense_mean_only_process_advantages_match_hand_table() -> None:
    trajs, rewards = _dense_group()
    out = compute_advantages(trajs, rewards, AdvantageConfig(normalize="group_mean_only"))
    # pooled calls [2, 1, 1, 1], mean 1.25 → [0.75, −0.25, −0.25, −0.25]
    # outcomes [1, 0.5], mean 0.75 → [0.25, −0.25]
    a, b = out.per_trajectory
    assert a.turn_advantages == pytest.approx((0.75, -0.25, 0.25))
    assert b.turn_advantages == pytest.approx((-0.25, -0.25))  # mean of its two calls, outcome
    assert a.advantages == pytest.approx((0, 0.75, 0, -0.25, 0, 0.25))
    assert b.advantages == pytest.approx((0, -0.25, -0.25, 0, -0.25))
    assert b.loss_mask == (0, 1, 1, 0, 1)


def test_dense_group_std_process_advantages_match_hand_table() -> None:
    trajs, rewards = _dense_group()
    out = compute_advantages(trajs, rewards, AdvantageConfig(normalize="group_std", eps=1e-6))
    # calls: deviations [.75, −.25, −.25, −.25], var = .75/4 = .1875, std = .4330127
    #   → [1.7320508, −0.5773503, −0.5773503, −0.5773503]
    # outcomes: deviations [.25, −.25], std .25 → [1, −1]
    a, b = out.per_trajectory
    assert a.turn_advantages == pytest.approx((1.7320468, -0.5773490, 0.999996), abs=1e-6)
    assert b.turn_advantages == pytest.approx((-0.5773490, -0.999996), abs=1e-6)


def test_dense_trajectory_without_answer_has_no_outcome_turn() -> None:
    # the run stopped at its tool-call limit: last turn issued a call, nothing followed
    cut = Trajectory(task="q", prompt_token_ids=[1], turns=[_asst([10]), _tool([20])], group_id="g")
    full = _one_call("g")
    rewards = [
        TrajectoryReward("dense", 0.0, (0.0,), 0, 1),
        TrajectoryReward("dense", 1.0, (2.0,), 1, 1),
    ]
    out = compute_advantages([cut, full], rewards, AdvantageConfig(normalize="group_mean_only"))
    # calls [0, 2] → [−1, 1]; outcomes [0, 1] → [−0.5, 0.5]
    assert out.per_trajectory[0].turn_advantages == (-1.0,)
    assert out.per_trajectory[1].turn_advantages == (1.0, 0.5)


def test_ungrouped_trajectories_share_a_batch_baseline() -> None:
    # a group id with one member in the batch counts as ungrouped
    trajs = [_one_call(None), _one_call("solo"), _one_call(None), _one_call("g"), _one_call("g")]
    rewards = [_scalar(r) for r in (0.0, 1.0, 1.0, 0.2, 0.2)]
    out = compute_advantages(trajs, rewards, AdvantageConfig(normalize="group_mean_only"))
    # ungrouped rewards [0, 1, 1], mean 2/3
    got = [out.per_trajectory[i].turn_advantages[0] for i in range(3)]
    assert got == pytest.approx([-2 / 3, 1 / 3, 1 / 3])
    assert (out.groups, out.batch_baseline, out.zero_variance_groups, out.skipped) == (2, 3, 1, 0)


def test_skip_policy_masks_out_ungrouped_trajectories() -> None:
    trajs = [_one_call(None), _one_call(None), _one_call("g"), _one_call("g")]
    rewards = [_scalar(r) for r in (0.0, 1.0, 0.0, 1.0)]
    out = compute_advantages(trajs, rewards, AdvantageConfig(ungrouped="skip"))
    assert out.skipped == 2 and out.batch_baseline == 0 and out.groups == 1
    for record in out.per_trajectory[:2]:
        assert record.skipped and record.zero_signal
        assert set(record.loss_mask) == {0} and set(record.advantages) == {0.0}
    assert sum(out.per_trajectory[2].loss_mask) == 3


def test_compute_advantages_rejects_inconsistent_input() -> None:
    trajs, rewards = _dense_group()
    with pytest.raises(TrainerError, match="one each"):
        compute_advantages(trajs, rewards[:1], AdvantageConfig())
    with pytest.raises(TrainerError, match="one reward kind"):
        compute_advantages(trajs, [rewards[0], _scalar(1.0)], AdvantageConfig())
    bad = [rewards[0], TrajectoryReward("dense", 0.5, (1.0,), 0, 1)]
    with pytest.raises(TrainerError, match="2 tool calls"):
        compute_advantages(trajs, bad, AdvantageConfig())


@pytest.mark.parametrize("kwargs", [{"normalize": "batch"}, {"eps": 0.0}, {"ungrouped": "drop"}])
def test_advantage_config_rejects_invalid_values(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        AdvantageConfig(**kwargs)  # type: ignore[arg-type]
