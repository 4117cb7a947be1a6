"""Per-token entropies from an OpenAI/vLLM completion response, by estimator (used by
:class:`~tepo_agent.backends.http_backend.HttpBackend`).

Four sources, best first:

- ``"plugin"``: tepo-agent's vLLM plugin (:mod:`tepo_agent.vllm.plugin`) computed the exact
  entropy and the sampled token's logprob inside vLLM's sampler and returned them in
  ``kv_transfer_params``; the request asks for no ``logprobs`` at all;
- ``"server"``: ``tepo-agent serve``'s exact ``choices[0].entropies`` (``entropy_kind: exact``);
- ``"topk"``: an estimate with bounds from the ``top_logprobs`` alternatives;
- ``"surprisal"``: the sampled token's ``-log p``, whose mean over a turn is unbiased for the
  turn's entropy at temperature 1.

``"auto"`` (the default) takes the first of these the server provides and records on each
generation (``entropy_kind``) which one produced its entropies.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Literal

from tepo_agent.backends.base import EntropyKind
from tepo_agent.errors import BackendError
from tepo_agent.vllm.plugin import plugin_values

EntropyEstimator = Literal["auto", "plugin", "topk", "surprisal", "server"]
FallbackEstimator = Literal["topk", "surprisal"]
ESTIMATORS: tuple[str, ...] = ("auto", "plugin", "topk", "surprisal", "server")

Bounds = tuple[tuple[float, ...], tuple[float, ...]]

_TOKEN_ID_KEY = re.compile(r"^token_id:(\d+)$")


def sampled_token_ids(choice: Mapping[str, Any]) -> tuple[int, ...]:
    """``choices[0].token_ids``, which every estimator needs."""
    token_ids = choice.get("token_ids")
    if token_ids is None:
        raise BackendError(
            "the server did not return choices[0].token_ids; it must support "
            "return_token_ids (vLLM >= 0.10.2 or tepo-agent serve)"
        )
    return tuple(int(t) for t in token_ids)


def response_logprobs(choice: Mapping[str, Any], n_tokens: int) -> tuple[float, ...] | None:
    """The sampled tokens' logprobs from ``choices[0].logprobs``; None when the server sent none
    (the request did not ask for them)."""
    token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
    if token_logprobs is None:
        return None
    if len(token_logprobs) != n_tokens:
        raise BackendError(
            f"the server returned {n_tokens} token ids but {len(token_logprobs)} token logprobs"
        )
    if any(lp is None for lp in token_logprobs):
        raise BackendError("the server returned a null logprob for a sampled token")
    return tuple(float(lp) for lp in token_logprobs)


def plugin_entropies(
    payload: Mapping[str, Any], n_tokens: int
) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(exact entropies, behaviour logprobs) from the vLLM plugin; None when it sent none."""
    params = payload.get("kv_transfer_params")
    if not isinstance(params, Mapping) or "tepo_entropy" not in params:
        return None
    entropies, logprobs = plugin_values(payload, n_tokens)
    return tuple(entropies), tuple(logprobs)


def server_entropies(choice: Mapping[str, Any], n_tokens: int) -> tuple[float, ...] | None:
    """``tepo-agent serve``'s exact per-token entropies; None when the server sent none."""
    exact = choice.get("entropies")
    if choice.get("entropy_kind") != "exact" or not isinstance(exact, list):
        return None
    if len(exact) != n_tokens:
        raise BackendError(f"the server returned {len(exact)} entropies for {n_tokens} tokens")
    return tuple(float(h) for h in exact)


def estimated_entropies(
    estimator: FallbackEstimator,
    choice: Mapping[str, Any],
    logprobs: tuple[float, ...],
    vocab_size: int,
    k: int,
) -> tuple[tuple[float, ...], EntropyKind, Bounds | None]:
    """Entropies estimated from ``logprobs`` (surprisal) or the top-k alternatives (with bounds)."""
    if estimator == "surprisal":
        return tuple(-lp for lp in logprobs), "surprisal", None
    top = (choice.get("logprobs") or {}).get("top_logprobs")
    if top is None or len(top) != len(logprobs):
        raise BackendError(
            "the server did not return top_logprobs for every sampled token; start it with "
            f"--max-logprobs >= {k}"
        )
    # Imported here: tepo_agent.entropy needs torch, which a surprisal-only client never loads.
    from tepo_agent.entropy import topk_entropy_bounds

    estimates: list[float] = []
    lowers: list[float] = []
    uppers: list[float] = []
    for position, alternatives in enumerate(top):
        bounds = topk_entropy_bounds(_topk_values(alternatives, position, k), vocab_size)
        estimates.append(bounds.estimate)
        lowers.append(bounds.lower)
        uppers.append(bounds.upper)
    return tuple(estimates), "topk", (tuple(lowers), tuple(uppers))


def _topk_values(alternatives: Any, position: int, k: int) -> list[float]:
    """The k largest logprobs of one ``top_logprobs`` entry.

    vLLM adds the sampled token to the top-k when it is not among them (k + 1 entries). The bounds
    assume every token left out is no more likely than the smallest one given, which holds for
    the k largest but not for that extra token, so it is dropped (it stays in the tail).
    """
    if not isinstance(alternatives, Mapping) or not alternatives:
        raise BackendError(f"top_logprobs[{position}] is empty; the server ignored logprobs=k")
    values: list[float] = []
    for key, value in alternatives.items():
        if not _TOKEN_ID_KEY.match(str(key)):
            raise BackendError(
                f"top_logprobs[{position}] key {key!r} is not 'token_id:N'; the server ignored "
                "return_tokens_as_token_ids, so byte tokens could collide"
            )
        lp = float(value)
        # JSON has no -inf: vLLM writes -9999.0 (exp() maps it to 0); NaN/inf mean no mass.
        values.append(lp if math.isfinite(lp) else -math.inf)
    return sorted(values, reverse=True)[:k]


__all__ = [
    "ESTIMATORS",
    "Bounds",
    "EntropyEstimator",
    "FallbackEstimator",
    "estimated_entropies",
    "plugin_entropies",
    "response_logprobs",
    "sampled_token_ids",
    "server_entropies",
]
