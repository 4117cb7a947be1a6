"""Steps 1-3 of a training step: exact ΔH per call → TEPO rewards → group-relative advantages.

:func:`step_signals` turns the step's trajectories and their exact token entropies (the recompute's,
or the fused training forward's: ``trainer.fusion``) into what the update trains on;
:func:`signal_metrics` summarises them for ``train_steps``. With no entropies (the outcome reward
fused with the update, whose R = score needs no ΔH) the calls' ΔH are unknown and only the
advantages are final; the step calls it again once the entropies exist, for the figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import torch

from tepo_agent.trainer.advantages import BatchAdvantages, compute_advantages
from tepo_agent.trainer.recompute import exact_turn_entropies
from tepo_agent.trainer.rewards import TrajectoryReward, trajectory_rewards
from tepo_agent.trainer.train_config import TrainConfig
from tepo_agent.trajectory import Trajectory

Deltas = tuple[float | None, ...]


def step_signals(
    trajs: Sequence[Trajectory], entropy: torch.Tensor | None, cfg: TrainConfig
) -> tuple[list[Deltas], list[TrajectoryReward], BatchAdvantages]:
    """ΔH per call, rewards and advantages of ``trajs`` (rows of ``entropy``, (B, T), aligned
    like ``pack_batch``). ``entropy`` None: every ΔH unknown (module docstring)."""
    deltas: list[Deltas] = []
    rewards = []
    for b, traj in enumerate(trajs):
        if entropy is None:
            d: Deltas = tuple(None for t in traj.turns if t.role == "tool")
        else:
            window = cfg.reward.entropy_window
            d = exact_turn_entropies(traj, entropy[b], window).delta_entropies
        deltas.append(d)
        rewards.append(trajectory_rewards(traj, cfg.reward, delta_entropies=d))
    return deltas, rewards, compute_advantages(trajs, rewards, cfg.advantage)


def signal_metrics(
    trajectories: Sequence[Trajectory],
    trajs: Sequence[Trajectory],
    rewards: Sequence[TrajectoryReward],
    deltas: Sequence[Deltas],
) -> dict[str, float]:
    """Rewards, scores, calls and ΔH of a step (``trajectories``: all of the step's;
    ``trajs``: the ones kept, with their ``rewards`` and ``deltas``)."""
    values = [r.reward for r in rewards]
    known = [d for ds in deltas for d in ds if d is not None]
    calls = sum(r.n for r in rewards)
    return {
        "reward_mean": statistics.fmean(values),
        "reward_std": statistics.pstdev(values),
        "score_mean": statistics.fmean(float(t.score or 0.0) for t in trajectories),
        "tool_calls_per_trajectory": calls / len(trajs),
        "entropy_reducing_share": (sum(r.m for r in rewards) / calls) if calls else 0.0,
        "delta_entropy_mean": statistics.fmean(known) if known else 0.0,
    }


__all__ = ["Deltas", "signal_metrics", "step_signals"]
