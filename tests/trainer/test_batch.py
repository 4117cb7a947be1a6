"""Packing trajectories into right-padded, target-aligned (B, T) tensors."""

from __future__ import annotations

import pytest
import torch

from tepo_agent.errors import TrainerError
from tepo_agent.trainer.advantages import compute_advantages
from tepo_agent.trainer.batch import pack_batch
from tepo_agent.trainer.config import AdvantageConfig
from tepo_agent.trainer.rewards import TrajectoryReward
from tepo_agent.trajectory import Trajectory, Turn


def _two() -> list[Trajectory]:
    a = Trajectory(
        task="a",
        prompt_token_ids=[1, 2],
        turns=[
            Turn("assistant", [10, 11], logprobs=[-0.1, -0.2], policy_version=3),
            Turn("tool", [20, 21]),
            Turn("assistant", [12], logprobs=[-0.3], policy_version=4),
        ],
        group_id="g",
    )
    b = Trajectory(
        task="b",
        prompt_token_ids=[1, 2, 3],
        turns=[Turn("assistant", [13], logprobs=[-0.4], policy_version=4)],
        group_id="g",
    )
    return [a, b]


def test_pack_batch_right_pads_and_aligns_to_target_positions() -> None:
    trajs = _two()
    batch = pack_batch(trajs, pad_token_id=99)
    assert batch.input_ids.tolist() == [[1, 2, 10, 11, 20, 21, 12], [1, 2, 3, 13, 99, 99, 99]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert batch.lengths.tolist() == [7, 4]
    # entry t is the logprob of token t (predicted from the logits at t − 1)
    torch.testing.assert_close(
        batch.behaviour_logprobs,
        torch.tensor([[0, 0, -0.1, -0.2, 0, 0, -0.3], [0, 0, 0, -0.4, 0, 0, 0]]),
    )
    assert batch.token_versions.tolist() == [[-1, -1, 3, 3, -1, -1, 4], [-1, -1, -1, 4, -1, -1, -1]]
    assert batch.behaviour_version.tolist() == [3, 4]
    # without advantages: train every sampled token, advantage 0
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0, 0]]
    assert batch.advantages.abs().sum().item() == 0.0
    assert batch.off_policy(4).tolist() == [
        [False, False, True, True, False, False, False],
        [False] * 7,
    ]
    assert batch.trajectory_ids == (trajs[0].id, trajs[1].id)


def test_pack_batch_carries_advantages_and_their_mask() -> None:
    trajs = _two()
    rewards = [TrajectoryReward("sparse", 1.0, (), 0, 1), TrajectoryReward("sparse", 0.0, (), 0, 0)]
    adv = compute_advantages(trajs, rewards, AdvantageConfig(normalize="group_mean_only"))
    batch = pack_batch(trajs, adv.per_trajectory)
    torch.testing.assert_close(
        batch.advantages, torch.tensor([[0, 0, 0.5, 0.5, 0, 0, 0.5], [0, 0, 0, -0.5, 0, 0, 0]])
    )
    assert batch.loss_mask.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0, 0]]
    assert batch.loss_mask.dtype == torch.float32


def test_first_token_is_never_a_target() -> None:
    turn = Turn("assistant", [5, 6], logprobs=[-1.0, -2.0], policy_version=0)
    traj = Trajectory(task="x", prompt_token_ids=[], turns=[turn])
    assert pack_batch([traj]).loss_mask.tolist() == [[0.0, 1.0]]


def test_pack_batch_rejects_incomplete_trajectories() -> None:
    no_lp = Trajectory(task="x", prompt_token_ids=[1], turns=[Turn("assistant", [5])])
    with pytest.raises(TrainerError, match="behaviour logprobs"):
        pack_batch([no_lp])
    no_version = Trajectory(
        task="x", prompt_token_ids=[1], turns=[Turn("assistant", [5], logprobs=[-1.0])]
    )
    with pytest.raises(TrainerError, match="policy_version"):
        pack_batch([no_version])
    with pytest.raises(TrainerError, match="empty batch"):
        pack_batch([])
    trajs = _two()
    rewards = [TrajectoryReward("sparse", r, (), 0, 1) for r in (1.0, 0.0)]
    adv = compute_advantages(trajs, rewards, AdvantageConfig())
    with pytest.raises(TrainerError, match="advantages cover"):
        pack_batch(trajs, adv.per_trajectory[::-1])
