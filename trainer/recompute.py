"""Exact recomputation: every token's raw logprob and full-vocabulary entropy under given weights.

One batched forward pass (micro-batched, no grad) over a packed :class:`TrainBatch`. The trainer
uses it three ways:

(a) exact entropy before rewards: live entropies over HTTP are estimates, so the trainer re-derives
    H(t_k) and ΔH_k from exact token entropies (:func:`exact_turn_entropies`);
(b) the proximal policy of the loss: logprobs with the weights at the start of an optimisation step
    (``loss.policy_loss(proximal_logprobs=...)``);
(c) ``check-logprobs``: with the sampler's weights, recomputed logprobs must equal the logged
    behaviour logprobs (docs/architecture.md, invariant 1; :func:`compare_logprobs`).

Outputs are (B, T) and aligned to target positions like the batch: entry t is the logprob of
token t and the entropy of the distribution it was drawn from, both from the logits at t − 1.
Position 0 and padding are 0. Example::

    batch = pack_batch(trajectories)
    logprobs, entropy = recompute(model, batch, micro_batch_size=8)
    per_call = [exact_turn_entropies(t, entropy[b], window=None) for b, t in enumerate(trajs)]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tepo_agent.entropy import delta_entropy, turn_entropy
from tepo_agent.errors import ConfigError, TrainerError
from tepo_agent.trainer.batch import TrainBatch
from tepo_agent.trainer.token_stats import TokenStats
from tepo_agent.trajectory import Trajectory


def forward_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-aligned logprobs and entropies of right-padded rows (keeps the graph if grad is on).

    The output layer and log-softmax run in chunks (``trainer.token_stats``): the full
    (B, T, V) float32 log-softmax is never materialised.

    Args:
        model: A causal LM whose output has ``.logits`` (B, T, V) (any transformers CausalLM),
            or a :class:`~tepo_agent.trainer.token_stats.TokenStats` around one (the trainer's,
            possibly sharded).
        input_ids: (B, T) int64, right-padded.
        attention_mask: (B, T) 1 on real tokens.

    Returns:
        ``(logprobs, entropy)``, both (B, T) float32, 0 at position 0 and on padding.
    """
    stats = model if isinstance(model, TokenStats) else TokenStats(model)
    lp, ent = stats(input_ids, attention_mask)
    return lp, ent


def idle_forward(model: torch.nn.Module, device: torch.device) -> torch.Tensor:
    """One forward pass over a 2-token dummy row, for a rank with no rows left in a pass.

    Under FSDP every rank must run the same number of forward (and backward) passes: each one
    gathers the sharded weights from all ranks. Returns a scalar that is 0 but depends on the
    weights, so that ``(idle_forward(...)).backward()`` takes part in the gradient reduction
    while adding nothing to the gradients.
    """
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    lp, _ = forward_logprobs(model, ids, torch.ones_like(ids))
    return lp.sum() * 0.0


def recompute(
    model: torch.nn.Module, batch: TrainBatch, *, micro_batch_size: int, min_passes: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact logprobs and entropies of every token of ``batch`` under ``model``'s weights.

    Runs without grad, in eval mode (the model's training flag is restored afterwards), in
    micro-batches of ``micro_batch_size`` rows, each cut to its longest row. ``min_passes``:
    run idle passes (:func:`idle_forward`) after the real ones until there were this many (a
    sharded model's ranks must run the same number of passes).

    Returns:
        ``(logprobs, entropy)``, both (B, T) float32 on the batch's device.
    """
    if micro_batch_size < 1:
        raise ConfigError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    device = next(model.parameters()).device
    B, T = batch.input_ids.shape
    logprobs = torch.zeros((B, T), dtype=torch.float32)
    entropy = torch.zeros((B, T), dtype=torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, B, micro_batch_size):
                rows = slice(start, start + micro_batch_size)
                width = int(batch.lengths[rows].max().item())
                ids = batch.input_ids[rows, :width].to(device)
                mask = batch.attention_mask[rows, :width].to(device)
                lp, ent = forward_logprobs(model, ids, mask)
                logprobs[rows, :width] = lp.float().cpu()
                entropy[rows, :width] = ent.float().cpu()
            for _ in range(min_passes - math.ceil(B / micro_batch_size)):
                idle_forward(model, device)
    finally:
        model.train(was_training)
    out_device = batch.input_ids.device
    return logprobs.to(out_device), entropy.to(out_device)


def logged_exact(trajectories: Sequence[Trajectory], weights_version: int | None) -> bool:
    """Whether the logged logprobs and entropies already are what :func:`recompute` would give.

    True when every assistant turn was sampled by ``weights_version`` (the weights the trainer
    holds now: on-policy) and logged exact full-vocabulary entropies and raw temperature-1
    logprobs for every token (the in-process backend does). Then the recompute pass can be
    skipped: the logged values equal it up to floating-point noise between two forward passes.
    """
    if weights_version is None:
        return False
    for traj in trajectories:
        for turn in traj.turns:
            if turn.role != "assistant":
                continue
            n = len(turn.token_ids)
            if (
                turn.policy_version != weights_version
                or turn.entropy_kind != "exact"
                or turn.entropies is None
                or turn.logprobs is None
                or len(turn.entropies) != n
                or len(turn.logprobs) != n
                or any(math.isnan(h) for h in turn.entropies)
            ):
                return False
    return True


def logged_entropies(batch: TrainBatch, trajectories: Sequence[Trajectory]) -> torch.Tensor:
    """The logged token entropies of ``batch``'s rows, (B, T) like :func:`recompute`'s (0 on
    prompt, tool and padding tokens)."""
    entropy = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for b, traj in enumerate(trajectories):
        pos = len(traj.prompt_token_ids)
        for turn in traj.turns:
            n = len(turn.token_ids)
            if turn.role == "assistant" and turn.entropies is not None:
                entropy[b, pos : pos + n] = torch.tensor(turn.entropies, dtype=torch.float32)
            pos += n
    return entropy


@dataclass(frozen=True)
class TurnEntropies:
    """Exact per-turn entropies of one trajectory.

    Attributes:
        turn_entropies: H(t_k) per assistant turn, in order (None for a turn with no tokens).
        delta_entropies: ΔH per tool turn, in call order: H(next assistant turn) − H(the turn
            that issued the call); parallel calls of one turn share it; None when either turn is
            missing or empty (e.g. the run stopped right after the call).
    """

    turn_entropies: tuple[float | None, ...]
    delta_entropies: tuple[float | None, ...]


def exact_turn_entropies(
    traj: Trajectory, token_entropies: Sequence[float] | torch.Tensor, window: int | None
) -> TurnEntropies:
    """H(t_k) and ΔH_k of ``traj`` from exact token entropies.

    Args:
        traj: The trajectory.
        token_entropies: Per-token entropies aligned with ``traj.full_token_ids()`` (e.g. row b
            of :func:`recompute`'s entropy; trailing padding is ignored).
        window: Average only the first N tokens of each turn (``RewardConfig.entropy_window``);
            None averages the whole turn.
    """
    values = (
        token_entropies.detach().cpu().tolist()
        if isinstance(token_entropies, torch.Tensor)
        else list(token_entropies)
    )
    total = len(traj.full_token_ids())
    if len(values) < total:
        raise TrainerError(
            f"trajectory {traj.id} has {total} tokens but only {len(values)} entropies were "
            f"given; pass entropies aligned with full_token_ids()"
        )
    turn_h: list[float | None] = []
    turn_of_call: list[int] = []  # index of the assistant turn that issued each call
    pos = len(traj.prompt_token_ids)
    for turn in traj.turns:
        n = len(turn.token_ids)
        if turn.role == "assistant":
            h = turn_entropy(values[pos : pos + n], window)
            turn_h.append(None if math.isnan(h) else h)
        else:
            turn_of_call.append(len(turn_h) - 1)
        pos += n
    deltas: list[float | None] = []
    for issuer in turn_of_call:
        before = turn_h[issuer] if issuer >= 0 else None
        after = turn_h[issuer + 1] if issuer + 1 < len(turn_h) else None
        deltas.append(delta_entropy(before, after))
    return TurnEntropies(tuple(turn_h), tuple(deltas))


@dataclass(frozen=True)
class LogprobCheck:
    """How far recomputed logprobs are from the logged behaviour logprobs (sampled tokens only).

    Attributes:
        tokens: Number of sampled tokens compared.
        max_abs_diff: Largest |recomputed − logged|.
        mean_abs_diff: Mean |recomputed − logged|.
    """

    tokens: int
    max_abs_diff: float
    mean_abs_diff: float


def compare_logprobs(batch: TrainBatch, logprobs: torch.Tensor) -> LogprobCheck:
    """Compare :func:`recompute`'s logprobs with the batch's behaviour logprobs."""
    sampled = batch.sampled_mask.to(logprobs.device)
    sampled[:, 0] = False
    diff = (logprobs - batch.behaviour_logprobs.to(logprobs.device)).abs()[sampled]
    if diff.numel() == 0:
        return LogprobCheck(tokens=0, max_abs_diff=0.0, mean_abs_diff=0.0)
    return LogprobCheck(
        tokens=int(diff.numel()),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
    )


__all__ = [
    "LogprobCheck",
    "TurnEntropies",
    "compare_logprobs",
    "exact_turn_entropies",
    "forward_logprobs",
    "idle_forward",
    "recompute",
]
