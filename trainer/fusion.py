"""When the exact recompute and the training forward are one pass (TRL's ``old = logp.detach()``).

A step first needs every token's exact logprob and entropy under the weights it starts from
(``recompute.recompute``: the proximal policy of the loss and the ΔH of TEPO's rewards), then a
training forward with grad under the *same* weights for its first optimizer update: as long as no
optimizer step has run, the two forwards compute the same numbers. The step can then compute
them once and take the proximal logprobs and entropies as the training forward's detached
outputs, as TRL does with ``num_iterations=1``. Two ways, chosen by :func:`fusion_mode`:

- ``"stream"`` (the outcome reward): the advantages do not depend on the entropies, so they
  exist before any forward pass; every micro-batch of the first update is forwarded with grad
  once, its detached outputs are the proximal policy (``update.accumulate`` with no proximal
  given). Rows that do not train (zero advantage) are recomputed alone, for the step's ΔH
  figures.
- ``"graph"`` (sparse and dense rewards, whose advantages need every ΔH first): when the step's
  rows fit one micro-batch, one forward with grad over all of them gives the entropies for the
  rewards, and its graph is kept for the first update's backward. Rows left out of the backward
  (zero advantage) would still cost their share of it, so the graph is used only when the
  trained rows hold at least :data:`GRAPH_MIN_TRAINED_SHARE` of the tokens (a backward costs
  about two forwards: backward over all rows ≤ forward + backward over the trained ones); else
  the detached outputs still replace the recompute and the training forward runs as usual.

Never fused, so the recompute runs where it is not the same numbers or cannot be shared: the
logged values already are exact and on-policy (no recompute at all, ``reuse_logged_exact``); a
model with active dropout (its training forward is random; the recompute runs in eval mode); the
distributed FSDP step (the recompute and the update split rows over ranks differently); sparse
and dense rewards over several micro-batches (the whole batch's graphs would have to stay alive
until the advantages exist); and every update after the first (``updates_per_batch`` > 1), which
runs after an optimizer step and takes the first update's values as its proximal policy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch

from tepo_agent.trainer.batch import TrainBatch
from tepo_agent.trainer.train_config import TrainConfig

FusionMode = Literal["stream", "graph"]
Pair = tuple[torch.Tensor, torch.Tensor]
RowsForward = Callable[[torch.Tensor, int], Pair]
"""(rows i of the trained batch, width) → those rows of a forward with grad that already ran."""

# the trained rows' share of the step's tokens above which the kept graph's backward is cheaper
# than a fresh training forward + backward over the trained rows alone (backward ≈ 2 forwards)
GRAPH_MIN_TRAINED_SHARE = 2.0 / 3.0

_DROPOUT_KEYS = ("dropout", "pdrop")


def deterministic_forward(model: torch.nn.Module) -> bool:
    """Whether ``model``'s training-mode forward equals its eval-mode forward: no dropout module
    with p > 0, and no dropout probability > 0 in its config (attention dropout is applied
    inside the attention kernel, not by a module)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return False
        config = getattr(module, "config", None)
        to_dict = getattr(config, "to_dict", None)
        if callable(to_dict):
            for key, value in to_dict().items():
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                if any(k in key for k in _DROPOUT_KEYS) and numeric and value > 0:
                    return False
    return True


def fusion_mode(
    cfg: TrainConfig, *, rows: int, distributed: bool, deterministic: bool, reuse: bool
) -> FusionMode | None:
    """How the step's recompute joins its first training forward (module docstring); None:
    the recompute runs as its own no-grad pass (or not at all when ``reuse``)."""
    if reuse or not cfg.fuse_recompute or distributed or not deterministic:
        return None
    if cfg.reward.kind == "outcome":
        return "stream"
    return "graph" if rows <= cfg.micro_batch_size else None


def graph_pays(kept_tokens: int, trained_tokens: int) -> bool:
    """Whether the kept graph's backward (over every row) beats a new forward + backward over the
    trained rows (``GRAPH_MIN_TRAINED_SHARE``)."""
    return trained_tokens >= GRAPH_MIN_TRAINED_SHARE * kept_tokens


def graph_rows(graph: Pair, picked: torch.Tensor) -> RowsForward:
    """Micro-batches of a forward already run over the step's kept rows: rows ``picked[i]`` of
    ``graph`` for the trained batch's rows i, cut to a width (the fused update's forward)."""
    lp, ent = graph

    def rows(index: torch.Tensor, width: int) -> Pair:
        sel = picked[index].to(lp.device)
        return lp[sel, :width], ent[sel, :width]

    return rows


def assemble_rows(batch: TrainBatch, *parts: tuple[Sequence[int], Pair | None]) -> Pair:
    """(logprobs, entropy), (B, T) on the CPU, of ``batch`` from the values of disjoint sets of
    its rows (each (len(rows), T') with T' <= T)."""
    lp = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    ent = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for rows, values in parts:
        if rows and values is not None:
            index = torch.tensor(list(rows), dtype=torch.long)
            width = values[0].shape[1]
            lp[index, :width], ent[index, :width] = values[0].cpu(), values[1].cpu()
    return lp, ent


__all__ = [
    "GRAPH_MIN_TRAINED_SHARE",
    "FusionMode",
    "Pair",
    "RowsForward",
    "assemble_rows",
    "deterministic_forward",
    "fusion_mode",
    "graph_pays",
    "graph_rows",
]
