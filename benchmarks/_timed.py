"""A backend wrapper that times every generation (shared by the benchmarks; no torch)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any


class TimedBackend:
    """Delegates to a backend and records each ``generate`` call: its latency and new tokens.

    ``record`` is the hook a benchmark overrides to keep more (e.g. the serving version).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.latencies: list[float] = []
        self.tokens = 0

    def reset(self) -> None:
        self.latencies, self.tokens = [], 0

    @property
    def seconds(self) -> float:
        return sum(self.latencies)

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def policy_version(self) -> int:
        return int(self.inner.policy_version)

    @property
    def vocab_size(self) -> int:
        return int(self.inner.vocab_size)

    def record(self, generation: Any, seconds: float) -> None:
        self.latencies.append(seconds)
        self.tokens += len(generation.token_ids)

    async def generate(self, prompt_token_ids: Sequence[int], params: Any) -> Any:
        start = time.perf_counter()
        generation = await self.inner.generate(prompt_token_ids, params)
        self.record(generation, time.perf_counter() - start)
        return generation

    async def aclose(self) -> None:
        await self.inner.aclose()
