"""Model backends: token ids in, token ids with logprobs and entropy out."""

from tepo_agent.backends.base import (
    Backend,
    EntropyKind,
    FinishReason,
    Generation,
    SamplingParams,
)

__all__ = ["Backend", "EntropyKind", "FinishReason", "Generation", "SamplingParams"]
