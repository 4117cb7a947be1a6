"""The backend protocol: prompt token ids in, sampled token ids with logprobs and entropy out.

Every backend (in-process transformers, the vLLM/OpenAI HTTP client) implements :class:`Backend`.
Prompts are token ids rendered by tepo-agent itself (never text the server re-tokenizes), and the
result carries, for every sampled token, its id, its behaviour log-probability and the entropy of
the distribution it was drawn from, plus the policy version of the weights that sampled it.

Conventions (see docs/architecture.md, invariants 1-3):
- ``logprobs`` are *raw* log-probabilities at temperature 1, before temperature, top-k and top-p
  (vLLM's default ``--logprobs-mode raw_logprobs``). The trainer recomputes exactly these.
- ``entropies`` are the entropy of the raw distribution at temperature 1, in nats. The in-process
  backend reports them exactly (``entropy_kind="exact"``); over HTTP they are estimates, with
  ``entropy_lower``/``entropy_upper`` bounds where the estimator has them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from tepo_agent.errors import ConfigError

EntropyKind = Literal["exact", "topk", "surprisal"]
"""How ``Generation.entropies`` were obtained:

- ``exact``: full-vocabulary entropy from the logits (in-process backend, ``tepo-agent serve``).
- ``topk``: estimate from the top-k logprobs and the tail mass, with lower/upper bounds.
- ``surprisal``: the sampled token's surprisal ``-log p(x_t)``; unbiased for ``H_t`` when sampling
  at temperature 1 from the raw distribution, so a turn's mean estimates the turn entropy.
"""

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one completion.

    Attributes:
        max_tokens: Upper bound on new tokens.
        temperature: Softmax temperature; 0 means greedy decoding.
        top_p: Nucleus sampling mass in (0, 1]; 1 disables it.
        top_k: Keep only the k most likely tokens; -1 (or 0) disables it.
        seed: Seed for this request's sampler; None draws from the backend's generator.
        stop_token_ids: Generation stops after sampling any of these (the stop token is kept in
            the output, so the trajectory stays token-exact). Backends add the model's own
            end-of-turn token.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < -1:
            raise ConfigError(
                f"top_k must be -1 (disabled), 0 (disabled) or >= 1, got {self.top_k}"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Generation:
    """One sampled completion, token-exact.

    All per-token tuples have the length of ``token_ids``. ``entropy_lower``/``entropy_upper``
    are None when the entropies are exact or the estimator has no bounds.
    """

    prompt_token_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    entropies: tuple[float, ...]
    entropy_kind: EntropyKind
    finish_reason: FinishReason
    policy_version: int
    entropy_lower: tuple[float, ...] | None = None
    entropy_upper: tuple[float, ...] | None = None
    replica: str | None = None  # which server sampled it (an HTTP replica's URL), None in-process

    def __post_init__(self) -> None:
        n = len(self.token_ids)
        lengths = {len(self.logprobs), len(self.entropies)}
        for bound in (self.entropy_lower, self.entropy_upper):
            if bound is not None:
                lengths.add(len(bound))
        if lengths != {n}:
            raise ValueError(f"per-token arrays must all have length {n}, got {sorted(lengths)}")


@runtime_checkable
class Backend(Protocol):
    """What the runtime needs from a model server.

    Implementations batch concurrent ``generate`` calls together and never change weights in the
    middle of a request.
    """

    @property
    def policy_version(self) -> int:
        """The version of the weights that will serve the next request."""
        ...

    @property
    def vocab_size(self) -> int:
        """Size of the model's output distribution (for entropy bounds)."""
        ...

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        """Sample one completion for a token-id prompt."""
        ...

    async def aclose(self) -> None:
        """Release the backend's resources (threads, connections)."""
        ...
