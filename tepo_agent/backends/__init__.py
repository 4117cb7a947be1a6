"""Model backends: token ids in, token ids with logprobs and entropy out."""

from tepo_agent.backends.base import (
    Backend,
    EntropyKind,
    FinishReason,
    Generation,
    SamplingParams,
)
from tepo_agent.backends.transformers_backend import BackendStats, TransformersBackend

__all__ = [
    "Backend",
    "BackendStats",
    "EntropyKind",
    "FinishReason",
    "Generation",
    "SamplingParams",
    "TransformersBackend",
]
