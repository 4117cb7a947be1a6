"""Model backends: token ids in, token ids with logprobs and entropy out.

The protocol types load eagerly; the backends themselves load on first use, so a process that
only reads the store or talks HTTP does not import torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tepo_agent._lazy import lazy_exports
from tepo_agent.backends.base import (
    Backend,
    EntropyKind,
    FinishReason,
    Generation,
    SamplingParams,
)

if TYPE_CHECKING:
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
    from tepo_agent.backends.transformers_backend import BackendStats, TransformersBackend

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "tepo_agent.backends.http_backend": "HttpBackend HttpBackendConfig",
        "tepo_agent.backends.transformers_backend": "BackendStats TransformersBackend",
    },
)


__all__ = [
    "Backend",
    "BackendStats",
    "EntropyKind",
    "FinishReason",
    "Generation",
    "HttpBackend",
    "HttpBackendConfig",
    "SamplingParams",
    "TransformersBackend",
]
