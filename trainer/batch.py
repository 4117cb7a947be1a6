"""Pack trajectories into right-padded (B, T) tensors for recomputation and the loss.

Row b is ``trajectories[b].full_token_ids()`` followed by padding. Every per-token tensor is
aligned to *target positions*: entry [b, t] is about token t of row b, whose logprob comes from
the logits at position t − 1. Position 0 is never a target (nothing predicts it), so its loss
mask is always 0. Padding has mask 0, advantage 0, behaviour logprob 0 and version −1.

Behaviour logprobs and versions come from the assistant turns (the sampler logged them, ARCHITECTURE
invariants 1-2); prompt and tool tokens were not sampled, so they carry 0 and version −1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tepo_agent.errors import TrainerError
from tepo_agent.trainer.advantages import TokenAdvantages
from tepo_agent.trajectory import Trajectory


@dataclass(frozen=True)
class TrainBatch:
    """A packed batch (see the module docstring for the alignment).

    Attributes:
        input_ids: (B, T) int64, right-padded with ``pad_token_id``.
        attention_mask: (B, T) int64, 1 on real tokens.
        loss_mask: (B, T) float32, 1 on assistant tokens that train.
        advantages: (B, T) float32.
        behaviour_logprobs: (B, T) float32, the sampler's logprob of token t.
        token_versions: (B, T) int64, the policy version that sampled token t; −1 if not sampled.
        behaviour_version: (B,) int64, the oldest version that sampled any token of the row.
        lengths: (B,) int64, real tokens per row.
        trajectory_ids: The trajectory id of each row.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    behaviour_logprobs: torch.Tensor
    token_versions: torch.Tensor
    behaviour_version: torch.Tensor
    lengths: torch.Tensor
    trajectory_ids: tuple[str, ...]

    @property
    def sampled_mask(self) -> torch.Tensor:
        """(B, T) bool: tokens a policy sampled (assistant tokens), trained or not."""
        return self.token_versions >= 0

    def off_policy(self, policy_version: int) -> torch.Tensor:
        """(B, T) bool: sampled tokens whose version differs from ``policy_version``."""
        return self.sampled_mask & (self.token_versions != policy_version)

    def select(self, rows: Sequence[int]) -> TrainBatch:
        """The batch of ``rows`` only (in that order), cut to the longest of them."""
        if not rows:
            raise TrainerError("select needs at least one row")
        index = torch.tensor(list(rows), dtype=torch.long)
        width = int(self.lengths[index].max())

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t[index, :width]

        return TrainBatch(
            input_ids=cut(self.input_ids),
            attention_mask=cut(self.attention_mask),
            loss_mask=cut(self.loss_mask),
            advantages=cut(self.advantages),
            behaviour_logprobs=cut(self.behaviour_logprobs),
            token_versions=cut(self.token_versions),
            behaviour_version=self.behaviour_version[index],
            lengths=self.lengths[index],
            trajectory_ids=tuple(self.trajectory_ids[i] for i in rows),
        )

    def to(self, device: torch.device | str) -> TrainBatch:
        """The same batch with every tensor on ``device``."""
        return TrainBatch(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            advantages=self.advantages.to(device),
            behaviour_logprobs=self.behaviour_logprobs.to(device),
            token_versions=self.token_versions.to(device),
            behaviour_version=self.behaviour_version.to(device),
            lengths=self.lengths.to(device),
            trajectory_ids=self.trajectory_ids,
        )


def _row(traj: Trajectory) -> tuple[list[int], list[float], list[int]]:
    """Token ids, behaviour logprobs and versions of one trajectory (unpadded)."""
    ids = list(traj.prompt_token_ids)
    logprobs = [0.0] * len(ids)
    versions = [-1] * len(ids)
    for k, turn in enumerate(traj.turns):
        n = len(turn.token_ids)
        ids.extend(turn.token_ids)
        if turn.role != "assistant":
            logprobs.extend([0.0] * n)
            versions.extend([-1] * n)
            continue
        if turn.logprobs is None or len(turn.logprobs) != n:
            got = "none" if turn.logprobs is None else len(turn.logprobs)
            raise TrainerError(
                f"trajectory {traj.id}, turn {k}: {n} sampled tokens but {got} behaviour "
                f"logprobs; every assistant token needs its logged logprob (re-collect it)"
            )
        if turn.policy_version is None:
            raise TrainerError(
                f"trajectory {traj.id}, turn {k}: no policy_version; the trainer cannot tell "
                f"on- from off-policy data without it"
            )
        logprobs.extend(float(x) for x in turn.logprobs)
        versions.extend([turn.policy_version] * n)
    return ids, logprobs, versions


def pack_batch(
    trajectories: Sequence[Trajectory],
    advantages: Sequence[TokenAdvantages] | None = None,
    *,
    pad_token_id: int = 0,
) -> TrainBatch:
    """Pack trajectories (and their advantages) into a right-padded :class:`TrainBatch`.

    Args:
        trajectories: The rows, in order.
        advantages: ``advantages[b]`` for row b (from ``compute_advantages``). None gives zero
            advantages and a loss mask of 1 on every assistant token (for logprob checks).
        pad_token_id: Id written into padding (masked everywhere, so any valid id works).

    Raises:
        TrainerError: empty batch, a missing behaviour logprob or version, or advantages that do
            not align with ``full_token_ids()``.
    """
    if not trajectories:
        raise TrainerError("cannot pack an empty batch; collect at least one trajectory")
    if advantages is not None and len(advantages) != len(trajectories):
        raise TrainerError(
            f"got {len(trajectories)} trajectories but {len(advantages)} advantage records"
        )
    rows = [_row(t) for t in trajectories]
    B = len(rows)
    T = max(len(ids) for ids, _, _ in rows)
    input_ids = torch.full((B, T), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.float32)
    adv = torch.zeros((B, T), dtype=torch.float32)
    behaviour = torch.zeros((B, T), dtype=torch.float32)
    versions = torch.full((B, T), -1, dtype=torch.long)
    behaviour_version = torch.full((B,), -1, dtype=torch.long)
    lengths = torch.zeros((B,), dtype=torch.long)
    for b, (ids, logprobs, vers) in enumerate(rows):
        L = len(ids)
        lengths[b] = L
        input_ids[b, :L] = torch.tensor(ids, dtype=torch.long)
        attention_mask[b, :L] = 1
        behaviour[b, :L] = torch.tensor(logprobs, dtype=torch.float32)
        versions[b, :L] = torch.tensor(vers, dtype=torch.long)
        sampled = [v for v in vers if v >= 0]
        if sampled:
            behaviour_version[b] = min(sampled)
        if advantages is None:
            loss_mask[b, :L] = (versions[b, :L] >= 0).float()
        else:
            record = advantages[b]
            if len(record.advantages) != L or len(record.loss_mask) != L:
                raise TrainerError(
                    f"trajectory {trajectories[b].id}: advantages cover "
                    f"{len(record.advantages)} tokens but the sequence has {L}; compute them "
                    f"from the same trajectory"
                )
            adv[b, :L] = torch.tensor(record.advantages, dtype=torch.float32)
            loss_mask[b, :L] = torch.tensor(record.loss_mask, dtype=torch.float32)
    loss_mask[:, 0] = 0.0  # token 0 is never predicted
    return TrainBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        advantages=adv,
        behaviour_logprobs=behaviour,
        token_versions=versions,
        behaviour_version=behaviour_version,
        lengths=lengths,
        trajectory_ids=tuple(t.id for t in trajectories),
    )


__all__ = ["TrainBatch", "pack_batch"]
