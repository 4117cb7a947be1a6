"""Model backends: token ids in, token ids with logprobs and entropy out.

The protocol types load eagerly; the backends themselves load on first use, so a process that
only reads the store or talks HTTP does not import torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

_LAZY = {
    "BackendStats": "tepo_agent.backends.transformers_backend",
    "TransformersBackend": "tepo_agent.backends.transformers_backend",
    "HttpBackend": "tepo_agent.backends.http_backend",
    "HttpBackendConfig": "tepo_agent.backends.http_backend",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
