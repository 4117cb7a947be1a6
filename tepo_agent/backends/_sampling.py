"""The in-process backend's per-step tensor work: drawing tokens and their logprobs.

Pure functions of tensors (no model, no state), used by the decode loop of
:class:`~tepo_agent.backends._decode.DecodeBatch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tepo_agent.backends.base import SamplingParams
from tepo_agent.entropy import token_logprobs_and_entropy


def sample_tokens(
    logits: Tensor, params: Sequence[SamplingParams], gens: Sequence[torch.Generator]
) -> Tensor:
    """One token per row: argmax when greedy, else temperature → top-k → top-p → draw."""
    chosen = logits.argmax(-1)  # (R,)
    for j, (p, gen) in enumerate(zip(params, gens, strict=True)):
        if p.greedy:
            continue
        row = logits[j] / p.temperature  # (V,)
        if 0 < p.top_k < row.shape[-1]:
            kth = row.topk(p.top_k).values[-1]
            row = row.masked_fill(row < kth, -math.inf)
        probs = torch.softmax(row, -1)
        if p.top_p < 1:
            sorted_p, order = probs.sort(descending=True)
            # drop a token when the mass before it already reaches top_p (keeps the first)
            drop = (sorted_p.cumsum(-1) - sorted_p) >= p.top_p
            probs = probs.scatter(0, order, sorted_p.masked_fill(drop, 0.0))
        chosen[j] = torch.multinomial(probs, 1, generator=gen)[0]
    return chosen


def sampled_logprobs(logits: Tensor, chosen: Tensor, *, entropy: bool) -> tuple[Tensor, Tensor]:
    """Raw (temperature-1) log-probability of each chosen token (R,), and the exact entropy of
    its row (R,); NaN entropies when ``entropy`` is False (the cost is then not paid)."""
    if entropy:
        return token_logprobs_and_entropy(logits, chosen)
    lp = torch.log_softmax(logits, -1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    return lp, torch.full_like(lp, math.nan)


__all__ = ["sample_tokens", "sampled_logprobs"]
