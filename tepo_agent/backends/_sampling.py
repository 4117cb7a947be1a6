"""The in-process backend's per-step tensor work: drawing tokens and their logprobs.

Pure functions of tensors (no model, no state), used by the decode loop of
:class:`~tepo_agent.backends._decode.DecodeBatch`.

Sampling is vectorised over the rows (temperature, top-k and top-p as per-row tensors, greedy rows
by one argmax), and each row still draws from its own ``torch.Generator``, by the exponential race
``torch.multinomial`` runs for one sample without replacement: V exponentials q from the row's
generator, the token is ``argmax(p / q)`` (the token ``torch.multinomial(p, 1, generator=g)``
returns, so a seed draws what it drew before the sampler was vectorised). A row's token depends
only on its logits, its parameters and its generator, so a seeded request draws the same tokens
alone or in any batch, at any row.

Why not one uniform per row through the inverse CDF (cheaper): it maps a random stream to the
same quantile of every distribution, so runs that share a seed (the same sample index of
different questions, as the agent's seeds are derived today) draw at the same quantiles and are
lucky or unlucky together; the race couples them far less. Measured on the demo: with the inverse
CDF the demo's gain vanished (−0.005, −0.010, +0.005 on seeds 0–2, against +0.026 to +0.045 with
the race).

The distribution drawn from is exactly the temperature → top-k → top-p one:

- top-k keeps every token whose tempered logit is >= the k-th largest (ties at the k-th value are
  all kept); ``top_k`` <= 0 or >= the vocabulary keeps all.
- top-p walks the kept tokens from the most likely (a stable sort: among equal logits the lower id
  first) and drops a token when the mass before it already reaches ``top_p`` (so the first token
  is always kept); ``top_p`` = 1 drops nothing.
- the kept probabilities are renormalised (the race needs no normalising).

Every row races in vocabulary order; the sorted order serves only to find what top-p drops.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from tepo_agent.backends.base import SamplingParams
from tepo_agent.entropy import token_logprobs_and_entropy


def _split(params: Sequence[SamplingParams], vocab: int) -> tuple[list[int], list[int]]:
    """Indices of the rows that draw in vocabulary order (no effective top-k or top-p) and of
    those that draw in sorted order; greedy rows are in neither."""
    plain: list[int] = []
    filtered: list[int] = []
    for j, p in enumerate(params):
        if p.temperature != 0:
            (filtered if 0 < p.top_k < vocab or p.top_p < 1 else plain).append(j)
    return plain, filtered


def _per_row(values: list[float], like: Tensor) -> Tensor | float:
    """``values`` as an (n, 1) tensor to broadcast over a row, or one float when all are equal."""
    if all(v == values[0] for v in values):
        return values[0]
    return torch.tensor(values, dtype=like.dtype, device=like.device).unsqueeze(-1)


def _ranked(x: Tensor, k: list[int]) -> tuple[Tensor, Tensor]:
    """Each row's k-th largest value (n, 1) of ``x`` (n, V), for ``k`` (n,), and its candidate
    tokens (n, L) ranked by value, ties by lower id: every token >= the k-th value, then others.

    When every row has an effective top-k, the ranking covers only the largest ``max(k)`` values
    (``topk`` and two sorts of that width; a stable sort of the whole vocabulary costs about
    30 µs a row on a CPU), unless ties at some row's k-th value spill past them. The kept tokens
    are ranked the same either way, so a row draws the same token whatever the batch's ``max(k)``.
    """
    width = max(k)
    k_index = torch.tensor([[v - 1] for v in k], device=x.device)  # (n, 1)
    if width < x.shape[-1]:
        values, ids = x.topk(width, dim=-1)  # (n, width), largest first
        kth = values.gather(-1, k_index)
        if int((x >= kth).sum(-1).max()) <= width:  # every kept token is a candidate
            ids = ids.sort(dim=-1).values  # by id, so that the stable sort breaks ties by id
            by_value = x.gather(-1, ids).sort(dim=-1, descending=True, stable=True).indices
            return kth, ids.gather(-1, by_value)
    sorted_x, order = x.sort(dim=-1, descending=True, stable=True)  # (n, V)
    return sorted_x.gather(-1, k_index), order


def _weights(logits: Tensor, params: Sequence[SamplingParams], filtered: bool) -> Tensor:
    """Unnormalised sampling weights (n, V) of non-greedy rows, in vocabulary order: the
    softmax of the tempered logits, with top-k and top-p applied when ``filtered``."""
    temperature = _per_row([p.temperature for p in params], logits)
    x = logits if isinstance(temperature, float) and temperature == 1 else logits / temperature
    if not filtered:
        return torch.softmax(x, -1)
    vocab = x.shape[-1]
    k = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    kth, order = _ranked(x, k)  # (n, 1), (n, L)
    # over the whole row, so a row's probabilities do not depend on the ranking's width
    probs = torch.softmax(x.masked_fill(x < kth, -math.inf), -1)  # (n, V)
    if all(p.top_p == 1 for p in params):
        return probs
    ranked_p = probs.gather(-1, order)  # (n, L); the tokens outside ``order`` are 0 already
    # top_p = 1 drops nothing (a cumulative sum may round to >= 1 before the end)
    top_p = _per_row([p.top_p if p.top_p < 1 else math.inf for p in params], ranked_p)
    drop = (ranked_p.cumsum(-1) - ranked_p) >= top_p  # the mass before it reaches top_p
    return probs.scatter(-1, order, ranked_p.masked_fill(drop, 0.0))


def _draw(weights: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """The token (n,) each row draws from its unnormalised ``weights`` (n, V): the exponential
    race of ``torch.multinomial`` (one sample, without replacement), V exponentials from the
    row's own generator, then ``argmax(w / q)``; a zero weight is never drawn."""
    vocab = weights.shape[-1]
    q = torch.stack(
        [torch.empty(vocab, dtype=weights.dtype, device=g.device).exponential_(1, generator=g)
         for g in gens]
    )  # fmt: skip
    return (weights / q.to(weights.device)).argmax(-1)


def _tokens(
    logits: Tensor, params: list[SamplingParams], gens: list[torch.Generator], filtered: bool
) -> Tensor:
    return _draw(_weights(logits, params, filtered), gens)


def sample_tokens(
    logits: Tensor, params: Sequence[SamplingParams], gens: Sequence[torch.Generator]
) -> Tensor:
    """One token per row (R,) from ``logits`` (R, V): argmax when greedy, else temperature →
    top-k → top-p → a draw with the row's generator (module docstring)."""
    plain, filtered = _split(params, logits.shape[-1])
    if plain and len(plain) == len(
        params
    ):  # the common case: every row samples the whole vocabulary
        return _tokens(logits, list(params), list(gens), filtered=False)
    chosen = logits.argmax(-1)  # (R,)
    for rows, sort in ((plain, False), (filtered, True)):
        if rows:
            index = torch.tensor(rows, device=logits.device)
            ps, gs = [params[j] for j in rows], [gens[j] for j in rows]
            chosen[index] = _tokens(logits[index], ps, gs, filtered=sort)
    return chosen


def sampling_distribution(logits: Tensor, params: Sequence[SamplingParams]) -> Tensor:
    """The probabilities (R, V) with which :func:`sample_tokens` draws each token of ``logits``
    (R, V): one-hot at the argmax for greedy rows."""
    probs = torch.zeros_like(logits, dtype=torch.float64)
    probs.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    for rows, sort in zip(_split(params, logits.shape[-1]), (False, True), strict=True):
        if rows:
            weights = _weights(logits[rows], [params[j] for j in rows], sort).double()
            probs[rows] = weights / weights.sum(-1, keepdim=True)
    return probs


def sampled_logprobs(logits: Tensor, chosen: Tensor, *, entropy: bool) -> tuple[Tensor, Tensor]:
    """Raw (temperature-1) log-probability of each chosen token (R,), and the exact entropy of
    its row (R,); NaN entropies when ``entropy`` is False (the cost is then not paid)."""
    if entropy:
        return token_logprobs_and_entropy(logits, chosen)
    lp = torch.log_softmax(logits, -1).gather(-1, chosen.unsqueeze(-1)).squeeze(-1)
    return lp, torch.full_like(lp, math.nan)


__all__ = ["sample_tokens", "sampled_logprobs", "sampling_distribution"]
