"""Helpers shared by the vLLM integration tests: exact in-process reference values and clients.

The reference is a teacher-forced float32 forward pass of the same weights in this process: for
the tokens a vLLM server sampled, it gives each token's exact logprob and the exact
full-vocabulary entropy of the distribution it was drawn from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel

from tepo_agent.backends.http_backend import EntropyEstimator, HttpBackend, HttpBackendConfig
from tepo_agent.entropy import token_logprobs_and_entropy
from tepo_agent.vllm.launcher import VllmServer


def exact_stats(
    model: PreTrainedModel, prompt: Sequence[int], tokens: Sequence[int]
) -> tuple[list[float], list[float]]:
    """Exact logprob of every token of ``tokens`` after ``prompt``, and the exact entropy."""
    ids = torch.tensor([[*prompt, *tokens]])  # (1, P+T)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1]  # (T, V)
    logprobs, entropies = token_logprobs_and_entropy(logits, torch.tensor(list(tokens)))
    return logprobs.tolist(), entropies.tolist()


def vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def http_backend(
    server: VllmServer,
    *,
    estimator: EntropyEstimator = "topk",
    model: str | None = None,
    max_retries: int = 3,
    backoff_s: float = 0.5,
) -> HttpBackend:
    """An :class:`HttpBackend` for ``server`` (its served model, or a LoRA adapter's name)."""
    config = HttpBackendConfig(
        base_url=server.base_url,
        model=model or server.model_name,
        entropy_estimator=estimator,
        max_retries=max_retries,
        backoff_s=backoff_s,
    )
    return HttpBackend(config, vocab_size=vocab_size(server.config.model))
