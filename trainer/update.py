"""Steps 4-5 of a training step: the loss over micro-batches with gradient accumulation.

``accumulate`` runs forward and backward over this rank's rows in micro-batches. Each
micro-batch's loss is weighted by its share of the *whole step's* batch (its loss tokens over all
the step's loss tokens for token-mean; its rows over all rows for sequence-mean), so the summed
gradient is the full-batch loss's gradient. Under FSDP (``trainer.distributed``) each rank's
share is of the global batch, the loss is multiplied by the world size because the gradient
reduce-scatter averages over ranks, and a rank with fewer micro-batches runs idle passes so
that every rank runs ``passes`` forward/backward pairs. ``clip_and_step`` clips the global
gradient norm (a DTensor norm under FSDP, reduced over ranks) and steps AdamW.

Fused with the recompute (``trainer.fusion``): with no proximal logprobs given, the update's own
forward is the proximal policy (the weights have not moved since the step began): each
micro-batch takes its detached logprobs and entropies, and writes them into ``record``; a
``forward`` may hand over micro-batches of a forward pass that already ran with grad.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from tepo_agent.trainer.batch import TrainBatch
from tepo_agent.trainer.config import LossConfig
from tepo_agent.trainer.distributed import Dist
from tepo_agent.trainer.loss import policy_loss
from tepo_agent.trainer.recompute import forward_logprobs, idle_forward

MicroForward = Callable[[slice, int], tuple[torch.Tensor, torch.Tensor]]
"""(rows, width) of this rank's batch → that micro-batch's (logprobs, entropy), with grad."""

# metrics combined by min/max (or set) rather than as share-weighted means
_NOT_MEANS = ("ratio_min", "ratio_max", "tokens")


@dataclass(frozen=True)
class StepRows:
    """This rank's rows of a step and what the whole step's batch holds.

    Attributes:
        batch: This rank's rows (``pack_batch`` with advantages), None when it has none.
        proximal, entropy, off, ref: (B, T) tensors aligned with ``batch`` (``ref`` None
            without a KL term; ``proximal`` and ``entropy`` None: fused, the update's forward
            gives them, module docstring).
        total_tokens: Loss-mask tokens of the step's batch over all ranks.
        total_rows: Rows with at least one loss token over all ranks.
        passes: Micro-batch passes every rank runs.
    """

    batch: TrainBatch | None
    proximal: torch.Tensor | None
    entropy: torch.Tensor | None
    off: torch.Tensor | None
    ref: torch.Tensor | None
    total_tokens: float
    total_rows: float
    passes: int


def accumulate(
    stats: torch.nn.Module,
    rows: StepRows,
    *,
    loss_cfg: LossConfig,
    micro_batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
    d: Dist,
    forward: MicroForward | None = None,
    record: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Backward over micro-batches (module docstring); returns the step's loss metrics.

    ``forward``: the micro-batches' forward (default: a pass of ``stats``). ``record``: (B, T)
    tensors that receive the proximal logprobs and entropies a fused update computed.
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    ratio = [math.inf, -math.inf]
    done = 0
    batch = rows.batch
    B = 0 if batch is None else batch.input_ids.shape[0]
    scale = float(d.world) if d.active else 1.0
    for start in range(0, B, micro_batch_size):
        assert batch is not None and rows.off is not None
        sel = slice(start, start + micro_batch_size)
        width = int(batch.lengths[sel].max())
        cut = (sel, slice(0, width))
        mask = batch.loss_mask[cut].to(device)
        if loss_cfg.aggregation == "token_mean":
            share = float(mask.sum()) / rows.total_tokens
        else:
            share = float((mask.sum(dim=1) > 0).sum()) / rows.total_rows
        if share == 0.0 and rows.proximal is not None:
            continue  # (a fused update still needs the rows' proximal values)
        if forward is None:
            with autocast():
                logp, ent = forward_logprobs(
                    stats, batch.input_ids[cut].to(device), batch.attention_mask[cut].to(device)
                )
        else:
            logp, ent = forward(sel, width)
        if rows.proximal is None or rows.entropy is None:  # fused: this forward is the proximal
            proximal, entropy = logp.detach().float(), ent.detach().float()
            if record is not None:
                record[0][cut], record[1][cut] = proximal.cpu(), entropy.cpu()
            if share == 0.0:
                continue
        else:
            proximal, entropy = rows.proximal[cut].to(device), rows.entropy[cut].to(device)
        out = policy_loss(
            logp.float(),
            batch.behaviour_logprobs[cut].to(device),
            batch.advantages[cut].to(device),
            mask,
            loss_cfg,
            proximal_logprobs=proximal,
            off_policy=rows.off[cut].to(device),
            ref_logprobs=None if rows.ref is None else rows.ref[cut].to(device),
            entropy=entropy,
        )
        (out.loss * (share * scale)).backward()
        done += 1
        for key, value in out.metrics.items():
            if key not in _NOT_MEANS:
                sums[key] = sums.get(key, 0.0) + value * share
                weights[key] = weights.get(key, 0.0) + share
        ratio = [min(ratio[0], out.metrics["ratio_min"]), max(ratio[1], out.metrics["ratio_max"])]
    if d.active:
        for _ in range(rows.passes - done):
            with autocast():
                idle = idle_forward(stats, device)
            idle.backward()
    return _combine(d.all_gather((sums, weights, ratio)), rows.total_tokens)


def _combine(
    parts: list[tuple[dict[str, float], dict[str, float], list[float]]], trained_tokens: float
) -> dict[str, float]:
    """Every rank's share-weighted sums → the step's metrics (shares sum to 1 over ranks)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    low, high = math.inf, -math.inf
    for part_sums, part_weights, (part_low, part_high) in parts:
        for key, value in part_sums.items():
            sums[key] = sums.get(key, 0.0) + value
            weights[key] = weights.get(key, 0.0) + part_weights[key]
        low, high = min(low, part_low), max(high, part_high)
    metrics = {k: sums[k] / weights[k] if weights[k] else 0.0 for k in sums}
    metrics["loss"] = sums.get("loss", 0.0)  # the shares sum to 1: this is the batch loss
    metrics["ratio_min"] = low if math.isfinite(low) else 1.0
    metrics["ratio_max"] = high if math.isfinite(high) else 1.0
    metrics["trained_tokens"] = trained_tokens
    return metrics


def clip_and_step(optimizer: torch.optim.Optimizer, max_grad_norm: float) -> float:
    """Clip the global gradient norm and step (skipped when the norm is not finite: the same
    decision on every rank, the norm being reduced over all of them). Returns the norm."""
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
    full = getattr(norm, "full_tensor", None)  # a DTensor under FSDP
    grad_norm = float(full() if callable(full) else norm)
    if math.isfinite(grad_norm):
        optimizer.step()
    return grad_norm


__all__ = ["MicroForward", "StepRows", "accumulate", "clip_and_step"]
