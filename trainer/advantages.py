"""Group-relative advantages: rewards → a per-token advantage and loss mask per trajectory.

GRPO (DeepSeekMath) normalises each trajectory's reward within its group of samples of one
prompt: A = (R − mean)/(std + eps). The result is spread over the trajectory's tokens, aligned with
``Trajectory.full_token_ids()``: assistant tokens carry their turn's advantage and a loss mask of
1; prompt and tool (environment) tokens carry 0 and a mask of 0 — the model did not choose them.

Where this departs from textbook GRPO, and why:

- **Population std.** std is the population std (ddof = 0), defined for any group size; TRL uses
  ddof = 1. The two differ by a constant factor per group size, i.e. only the step size.
- **No-std option** (``normalize="group_mean_only"``, Dr. GRPO): A = R − mean. Dividing by the std
  up-weights groups that are almost all right or all wrong (a difficulty bias).
- **Zero-variance groups** (all rewards equal, e.g. every sample correct) get exactly zero
  advantage: no policy gradient (only the KL term, if any, acts on them). They are counted in
  :attr:`BatchAdvantages.zero_variance_groups` so the loop can drop or resample them, as DAPO's
  dynamic sampling does.
- **Ungrouped trajectories** (production traffic: ``group_id`` None, or a group with a single
  member in this batch) have no group to compare with. With ``ungrouped="batch_baseline"`` they
  are normalised together as one pseudo-group over the batch (the baseline is the batch mean of
  their rewards, blind to prompt difficulty); with ``"skip"`` they get a zero loss mask.
- **Dense process advantages** (TEPO's dense reward; the paper's exact combination is not public,
  this one is ours). Each call k has a reward r_k. Within a group, the rewards of *all calls of all
  members* are pooled and normalised like the trajectory rewards; call k's advantage goes to the
  tokens of the assistant turn that issued it (t_{k−1}); a turn that issued several (parallel)
  calls gets the mean of their advantages. The final answer turn t_K gets the outcome advantage
  (the trajectory reward R = score, group-normalised). A trajectory that ended without an answer
  (its last turn issued calls) has no outcome-advantage turn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from tepo_agent.errors import TrainerError
from tepo_agent.trainer.config import AdvantageConfig, Normalize
from tepo_agent.trainer.rewards import TrajectoryReward
from tepo_agent.trajectory import Trajectory


@dataclass(frozen=True)
class TokenAdvantages:
    """One trajectory's advantages, aligned with ``Trajectory.full_token_ids()``.

    Attributes:
        advantages: Per-token advantage (0 on prompt and tool tokens).
        loss_mask: 1 on assistant tokens that train, 0 elsewhere.
        turn_advantages: The advantage of each assistant turn, in order.
        zero_signal: True when every advantage is exactly zero (zero-variance group, or skipped).
        skipped: True when the trajectory was ungrouped and ``ungrouped="skip"``.
    """

    advantages: tuple[float, ...]
    loss_mask: tuple[int, ...]
    turn_advantages: tuple[float, ...]
    zero_signal: bool
    skipped: bool


@dataclass(frozen=True)
class BatchAdvantages:
    """Advantages of a batch, plus what happened to its groups.

    Attributes:
        per_trajectory: One :class:`TokenAdvantages` per input trajectory, in input order.
        groups: Number of groups normalised (real groups, plus the batch-baseline pseudo-group).
        zero_variance_groups: Groups whose trajectory rewards were all equal (zero advantage).
        zero_variance_call_groups: Dense only: groups with calls whose call rewards were all equal.
        batch_baseline: Trajectories normalised against the batch baseline (ungrouped).
        skipped: Trajectories skipped (ungrouped with ``ungrouped="skip"``).
    """

    per_trajectory: tuple[TokenAdvantages, ...]
    groups: int
    zero_variance_groups: int
    zero_variance_call_groups: int
    batch_baseline: int
    skipped: int


def normalize_group(
    values: Sequence[float], normalize: Normalize, eps: float
) -> tuple[list[float], bool]:
    """Group-relative advantages of ``values``; returns (advantages, zero_variance).

    ``group_std``: (v − mean)/(std + eps), population std. ``group_mean_only``: v − mean. When all
    values are equal the advantages are exactly 0 and ``zero_variance`` is True.
    """
    if not values:
        return [], False
    mean = math.fsum(values) / len(values)
    if max(values) == min(values):
        return [0.0] * len(values), True
    if normalize == "group_mean_only":
        return [v - mean for v in values], False
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / (std + eps) for v in values], False


def _group_members(
    trajectories: Sequence[Trajectory],
) -> tuple[list[list[int]], list[int]]:
    """Real groups (>= 2 members in the batch), and the indices of ungrouped trajectories."""
    by_group: dict[str, list[int]] = {}
    ungrouped: list[int] = []
    for i, traj in enumerate(trajectories):
        if traj.group_id is None:
            ungrouped.append(i)
        else:
            by_group.setdefault(traj.group_id, []).append(i)
    groups: list[list[int]] = []
    for members in by_group.values():
        if len(members) >= 2:
            groups.append(members)
        else:
            ungrouped.extend(members)
    return groups, sorted(ungrouped)


def _turn_calls(traj: Trajectory) -> list[list[int]]:
    """For each assistant turn, the indices (in call order) of the tool calls it issued."""
    per_turn: list[list[int]] = []
    call = 0
    for turn in traj.turns:
        if turn.role == "assistant":
            per_turn.append([])
        else:
            if not per_turn:
                raise TrainerError(
                    f"trajectory {traj.id} starts with a tool turn; a tool call must follow "
                    f"the assistant turn that issued it"
                )
            per_turn[-1].append(call)
            call += 1
    return per_turn


def _spread(
    traj: Trajectory, turn_advantages: Sequence[float], train: bool
) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Per-token advantages and mask aligned with ``full_token_ids()``."""
    adv = [0.0] * len(traj.prompt_token_ids)
    mask = [0] * len(traj.prompt_token_ids)
    k = 0
    for turn in traj.turns:
        n = len(turn.token_ids)
        if turn.role == "assistant":
            value = turn_advantages[k] if train else 0.0
            adv.extend([value] * n)
            mask.extend([1 if train else 0] * n)
            k += 1
        else:
            adv.extend([0.0] * n)
            mask.extend([0] * n)
    return tuple(adv), tuple(mask)


def compute_advantages(
    trajectories: Sequence[Trajectory],
    rewards: Sequence[TrajectoryReward],
    cfg: AdvantageConfig,
) -> BatchAdvantages:
    """Group-normalised per-token advantages for a batch (see the module docstring).

    Args:
        trajectories: The batch; group members share ``group_id``.
        rewards: ``rewards[i]`` is the reward of ``trajectories[i]``; all of one kind.

    Raises:
        TrainerError: lengths differ, reward kinds are mixed, or a dense reward does not have
            one call reward per tool call.
    """
    turn_calls = [_turn_calls(t) for t in trajectories]
    dense = _check_rewards(trajectories, rewards, turn_calls)
    groups, ungrouped = _group_members(trajectories)
    skipped: set[int] = set()
    if ungrouped:
        if cfg.ungrouped == "batch_baseline":
            groups.append(ungrouped)
        else:
            skipped.update(ungrouped)
    norm = _normalize_groups(groups, rewards, cfg, dense=dense, size=len(trajectories))
    per_traj = tuple(
        _token_advantages(
            traj, turn_calls[i], norm.outcome[i], norm.calls[i], dense=dense, train=i not in skipped
        )
        for i, traj in enumerate(trajectories)
    )
    return BatchAdvantages(
        per_trajectory=per_traj,
        groups=len(groups),
        zero_variance_groups=norm.zero_variance,
        zero_variance_call_groups=norm.zero_variance_calls,
        batch_baseline=len(ungrouped) if cfg.ungrouped == "batch_baseline" else 0,
        skipped=len(skipped),
    )


def _check_rewards(
    trajectories: Sequence[Trajectory],
    rewards: Sequence[TrajectoryReward],
    turn_calls: Sequence[list[list[int]]],
) -> bool:
    """Whether the batch's rewards are dense, after checking they fit the trajectories."""
    if len(trajectories) != len(rewards):
        raise TrainerError(
            f"got {len(trajectories)} trajectories but {len(rewards)} rewards; pass one each"
        )
    kinds = {r.kind for r in rewards}
    if len(kinds) > 1:
        raise TrainerError(f"a batch must use one reward kind, got {sorted(kinds)}")
    dense = kinds == {"dense"}
    if dense:
        for traj, reward, calls in zip(trajectories, rewards, turn_calls, strict=True):
            n_calls = sum(len(c) for c in calls)
            if len(reward.call_rewards) != n_calls:
                raise TrainerError(
                    f"trajectory {traj.id} has {n_calls} tool calls but its dense reward has "
                    f"{len(reward.call_rewards)} call rewards; recompute its reward"
                )
    return dense


@dataclass(frozen=True)
class _GroupNormalized:
    """Per trajectory: its normalised outcome advantage and (dense) per-call advantages."""

    outcome: list[float]
    calls: list[list[float]]
    zero_variance: int
    zero_variance_calls: int


def _normalize_groups(
    groups: Sequence[list[int]],
    rewards: Sequence[TrajectoryReward],
    cfg: AdvantageConfig,
    *,
    dense: bool,
    size: int,
) -> _GroupNormalized:
    """Normalise each group's rewards (and, dense, its pooled call rewards) within the group."""
    outcome_adv = [0.0] * size
    call_adv: list[list[float]] = [[] for _ in range(size)]
    zero_var = zero_var_calls = 0
    for members in groups:
        values, flat = normalize_group([rewards[i].reward for i in members], cfg.normalize, cfg.eps)
        zero_var += flat
        for i, a in zip(members, values, strict=True):
            outcome_adv[i] = a
        if dense:
            pooled = [r for i in members for r in rewards[i].call_rewards]
            normed, flat_calls = normalize_group(pooled, cfg.normalize, cfg.eps)
            zero_var_calls += flat_calls
            start = 0
            for i in members:
                n = len(rewards[i].call_rewards)
                call_adv[i] = normed[start : start + n]
                start += n
    return _GroupNormalized(outcome_adv, call_adv, zero_var, zero_var_calls)


def _token_advantages(
    traj: Trajectory,
    turn_calls: list[list[int]],
    outcome: float,
    calls: list[float],
    *,
    dense: bool,
    train: bool,
) -> TokenAdvantages:
    """One trajectory's per-turn advantages (a dense turn: the mean of its calls'), per token."""
    turn_adv: list[float] = []
    for issued in turn_calls:
        if dense and issued:
            turn_adv.append(math.fsum(calls[c] for c in issued) / len(issued))
        else:
            turn_adv.append(outcome)
    adv, mask = _spread(traj, turn_adv, train)
    return TokenAdvantages(
        advantages=adv,
        loss_mask=mask,
        turn_advantages=tuple(turn_adv) if train else tuple(0.0 for _ in turn_adv),
        zero_signal=all(a == 0.0 for a in adv),
        skipped=not train,
    )


__all__ = ["BatchAdvantages", "TokenAdvantages", "compute_advantages", "normalize_group"]
