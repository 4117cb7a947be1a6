"""Dynamic sampling: groups whose rewards cannot differ are dropped before they cost compute.

A GRPO group whose rewards are all equal has zero advantage everywhere: its backward pass
changes nothing (only a KL term would act), yet it still costs a forward and a backward and, with
token-mean aggregation, dilutes the other groups' gradient. DAPO ("dynamic sampling") drops such
groups. Two checks, both pure:

- :func:`flat_by_score`, *before* the exact-entropy recompute: a group is flat whatever its
  entropies when every score is 0 (every reward kind gives R = 0, and the dense reward r_k = 0)
  or, for the outcome reward, when every score is equal. Such groups skip the recompute too.
- after the advantages: a trajectory whose advantages are all zero (``zero_signal``: e.g. a sparse
  group in which every sample had the same m/n) is left out of the backward pass.

Ungrouped trajectories (production traffic normalised against the batch baseline) are never
dropped here.
"""

from __future__ import annotations

from collections.abc import Sequence

from tepo_agent.trainer.config import RewardKind
from tepo_agent.trajectory import Trajectory


def flat_by_score(scores: Sequence[float], kind: RewardKind) -> bool:
    """Whether a group's rewards are all equal whatever its entropy changes."""
    if not scores:
        return False
    if all(s == 0.0 for s in scores):
        return True
    return kind == "outcome" and max(scores) == min(scores)


def informative(trajectories: Sequence[Trajectory], kind: RewardKind) -> tuple[list[int], int]:
    """Indices (in order) of the trajectories worth a recompute, and how many groups were flat.

    Only real groups (a ``group_id`` shared by at least two trajectories of the batch) can be
    flat; everything else is kept.
    """
    by_group: dict[str, list[int]] = {}
    for i, traj in enumerate(trajectories):
        if traj.group_id is not None:
            by_group.setdefault(traj.group_id, []).append(i)
    dropped: set[int] = set()
    flat = 0
    for members in by_group.values():
        scores = [float(trajectories[i].score or 0.0) for i in members]
        if len(members) >= 2 and flat_by_score(scores, kind):
            dropped.update(members)
            flat += 1
    return [i for i in range(len(trajectories)) if i not in dropped], flat


__all__ = ["flat_by_score", "informative"]
