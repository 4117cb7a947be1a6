"""Token and turn entropy: the exact value, a top-k estimate with bounds, and ΔH per tool call.

docs/architecture.md, invariants 3 and 4. Everything here is a pure function:

- :func:`token_logprobs_and_entropy` / :func:`entropy_from_logits`: the exact entropy
  H_t = −Σ_v p(v) log p(v) of the raw (temperature-1) distribution, in nats, from logits. The
  in-process backend and the trainer use these.
- :func:`topk_entropy_bounds`: what an HTTP backend can say about H_t from the top-k logprobs alone
  (vLLM ``logprobs=k``): a point estimate and guaranteed lower/upper bounds from the tail mass.
- :func:`turn_entropy` / :func:`delta_entropy`: H(t_k), the mean token entropy of an assistant
  turn, and ΔH_k = H(t_k) − H(t_{k−1}), the change that tool call k caused (the one definition
  of ΔH; :func:`delta_entropies` applies it along a run).

The tensor functions import torch when called: the agent needs only the turn functions, so an
application whose backend is HTTP does not load torch for them.

Example::

    logp, ent = token_logprobs_and_entropy(logits, sampled_ids)   # logits (B, V), ids (B,)
    est = topk_entropy_bounds([-0.1, -2.5, -4.0], vocab_size=151_936)
    h = [turn_entropy(t.entropies) for t in turns]
    dh = delta_entropies(h)                                        # one value per tool call
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar, overload

from tepo_agent.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "EntropyEstimate",
    "delta_entropies",
    "delta_entropy",
    "entropy_from_logits",
    "token_logprobs_and_entropy",
    "topk_entropy_bounds",
    "turn_entropy",
]

T = TypeVar("T", float, "Tensor")


# --------------------------------------------------------------------------------------------
# exact entropy from logits


def _entropy_from_logp(logp: Tensor, undefined: Tensor) -> Tensor:
    """−Σ p log p over the last dim of log-probabilities ``logp`` (..., V), with 0·log 0 = 0;
    NaN where ``undefined`` (...) is True.

    One exp, one multiply and one sum, reusing ``log p`` from the ``log_softmax``: the only NaN a
    row with a distribution can hold is 0·(−inf) at a masked token, whose term is 0, so ``nansum``
    drops it (``special.entr(p)`` took the log of p a second time: 3x the time at a 152k
    vocabulary). ``nansum`` would make a row with no distribution 0: the caller marks those rows
    (logits all -inf, or any NaN or +inf: ``log_softmax`` makes every entry of the row NaN).
    """
    return (logp.exp() * logp).nansum(dim=-1).neg_().masked_fill_(undefined, math.nan)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Exact entropy −Σ p log p in nats of ``softmax(logits)`` over the last dim.

    Args:
        logits: (..., V) raw logits at temperature 1, any float dtype (computed in float32).

    Returns:
        (...) float32 entropies. Logits of -inf (masked tokens) are fine; a row whose logits are
        all -inf (or hold a NaN or +inf) has no distribution and gives NaN.
    """
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return _entropy_from_logp(logp, torch.isnan(logp[..., 0]))


def token_logprobs_and_entropy(logits: Tensor, token_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Log-probability of ``token_ids`` and the exact entropy, from one ``log_softmax``.

    Args:
        logits: (..., V) raw logits at temperature 1 (bf16/fp16 are upcast to float32 first, so
            the result does not depend on the model's dtype beyond the logits themselves).
        token_ids: (...) int64 ids, one per distribution.

    Returns:
        ``(logprobs, entropies)``, both (...) float32; entropies in nats.
    """
    import torch

    if logits.shape[:-1] != token_ids.shape:
        raise ConfigError(
            f"token_ids shape {tuple(token_ids.shape)} must equal logits shape without the "
            f"vocabulary dim {tuple(logits.shape[:-1])}"
        )
    logp = torch.log_softmax(logits.float(), dim=-1)  # (..., V)
    token_logp = logp.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1)  # (...)
    # a token's log-probability is NaN exactly when its row has no distribution
    return token_logp, _entropy_from_logp(logp, torch.isnan(token_logp))


# --------------------------------------------------------------------------------------------
# top-k estimate with bounds


@dataclass(frozen=True)
class EntropyEstimate(Generic[T]):
    """An entropy estimate with guaranteed bounds: ``lower <= exact <= upper``.

    Floats for one distribution, (...) float64 tensors for a batch.
    """

    estimate: T
    lower: T
    upper: T


@overload
def topk_entropy_bounds(
    topk_logprobs: Sequence[float], vocab_size: int
) -> EntropyEstimate[float]: ...
@overload
def topk_entropy_bounds(topk_logprobs: Tensor, vocab_size: int) -> EntropyEstimate[Tensor]: ...
def topk_entropy_bounds(
    topk_logprobs: Sequence[float] | Tensor, vocab_size: int
) -> EntropyEstimate[float] | EntropyEstimate[Tensor]:
    """Entropy of a V-token distribution known only through its k largest log-probabilities.

    With top-k probabilities p_1..p_k (in any order), their part H_top = −Σ p_i log p_i and the
    tail mass r = 1 − Σ p_i, spread somehow over the m = V − k other tokens, each of which is at
    most p_min = min p_i (they are not in the top k):

    - upper bound: the tail spread uniformly, H_top + r·log(m / r) (the most entropy mass r can
      have on m tokens).
    - lower bound: the tail as concentrated as the cap allows, n = ⌊r / p_min⌋ tokens at p_min and
      one at the remainder ρ = r − n·p_min: H_top − n·p_min·log p_min − ρ·log ρ. Entropy is
      concave, so its minimum over {0 ≤ q_j ≤ p_min, Σ q_j = r} sits at such a vertex.
    - estimate: the midpoint of the two bounds. It is the minimax choice when nothing else is known
      about the tail (its worst-case error is half the gap); ``benchmarks/`` measures its error
      against the exact value.

    Args:
        topk_logprobs: (k,) floats, or a (..., k) tensor for many positions at once. Entries may be
            -inf (fewer than k tokens with nonzero probability).
        vocab_size: V, the size of the full distribution (``Backend.vocab_size``), >= k.

    Returns:
        :class:`EntropyEstimate` of floats for a sequence, of (...) float64 tensors for a tensor.
        When k == V (or the tail mass is 0) the three values coincide.
    """
    import torch

    as_tensor = isinstance(topk_logprobs, torch.Tensor)
    lp = (
        topk_logprobs.detach().to(torch.float64)
        if isinstance(topk_logprobs, torch.Tensor)
        else torch.tensor(list(topk_logprobs), dtype=torch.float64)
    )
    if lp.ndim == 0 or lp.shape[-1] == 0:
        raise ConfigError("topk_logprobs must hold at least one log-probability per position")
    k = lp.shape[-1]
    if vocab_size < k:
        raise ConfigError(
            f"vocab_size ({vocab_size}) must be >= the number of top-k logprobs ({k})"
        )
    if torch.isnan(lp).any() or (lp > 1e-6).any():
        raise ConfigError("topk_logprobs must be log-probabilities (<= 0, not NaN)")

    lp = lp.clamp(max=0.0)
    p = lp.exp()  # (..., k)
    h_top = -torch.special.xlogy(p, p).sum(-1)  # (...)
    # Rounding in the server's logprobs can make Σ p slightly exceed 1: no tail then.
    r = (1.0 - p.sum(-1)).clamp(min=0.0)  # (...)
    m = vocab_size - k

    if m == 0:
        tail_upper = torch.zeros_like(r)
        tail_lower = torch.zeros_like(r)
    else:
        tail_upper = r * (math.log(m) - torch.log(r.clamp(min=1e-300)))  # r·log(m/r), 0 at r=0
        p_min = p.min(-1).values  # (...)
        safe_p_min = torch.where(p_min > 0, p_min, torch.ones_like(p_min))
        # If the top-k hold zeros the tail is zero too; clamp n to the m tail tokens.
        n = torch.floor(r / safe_p_min).clamp(max=float(m))
        rho = (r - n * safe_p_min).clamp(min=0.0)
        tail_lower = -n * torch.special.xlogy(safe_p_min, safe_p_min) - torch.special.xlogy(
            rho, rho
        )
        tail_lower = torch.where(p_min > 0, tail_lower, torch.zeros_like(tail_lower))
        tail_upper = torch.maximum(tail_upper, tail_lower)  # float safety: keep lower <= upper

    lower = h_top + tail_lower
    upper = h_top + tail_upper
    estimate = (lower + upper) / 2
    if as_tensor:
        return EntropyEstimate(estimate=estimate, lower=lower, upper=upper)
    return EntropyEstimate(estimate=float(estimate), lower=float(lower), upper=float(upper))


# --------------------------------------------------------------------------------------------
# turn entropy and ΔH


def turn_entropy(entropies: Sequence[float], window: int | None = None) -> float:
    """H(t_k): the mean token entropy of one assistant turn (docs/architecture.md, invariant 4).

    Args:
        entropies: the per-token entropies of the turn, in order.
        window: if given, average only the first ``window`` tokens (a turn shorter than the window
            uses all its tokens).

    Returns:
        The mean, or NaN for a turn with no tokens (nothing was sampled, so it has no entropy; NaN
        propagates into ΔH, which callers treat as "unknown", never as a reduction).
    """
    if window is not None and window < 1:
        raise ConfigError(f"window must be None or >= 1, got {window}")
    values = list(entropies) if window is None else list(entropies)[:window]
    if not values:
        return math.nan
    return math.fsum(values) / len(values)


def delta_entropy(before: float | None, after: float | None) -> float | None:
    """ΔH_k = H(t_k) − H(t_{k−1}) of the tool call between two assistant turns.

    The one definition of ΔH: the agent (live, per call), the trajectory builder and the
    trainer's exact recomputation all call it. ``before`` is H of the turn that issued the call,
    ``after`` H of the turn sampled after its result. None when either is unknown (None, or NaN
    for a turn with no tokens): an unknown ΔH is never counted as a reduction.
    """
    if before is None or after is None or math.isnan(before) or math.isnan(after):
        return None
    return float(after) - float(before)


def delta_entropies(turn_entropies: Sequence[float]) -> list[float]:
    """ΔH_k = H(t_k) − H(t_{k−1}) for k = 1..K, given H(t_0)..H(t_K).

    Entry k−1 of the result belongs to tool call k (issued at the end of t_{k−1}); a negative
    value marks an entropy-reducing call. Fewer than two turns give an empty list; an unknown
    ΔH (:func:`delta_entropy` gives None) is NaN here, so the list stays all floats.
    """
    h = list(turn_entropies)
    deltas = (delta_entropy(h[k - 1], h[k]) for k in range(1, len(h)))
    return [math.nan if d is None else d for d in deltas]
