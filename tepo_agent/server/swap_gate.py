"""The swap gate: weights change only between requests of ``tepo-agent serve``.

Requests share the current weights (the generation and its top-k pass must see the same ones); a
weight swap waits until the requests in flight have finished and holds new ones back until the
new weights serve (docs/architecture.md, invariant 7). Swaps take turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class SwapGate:
    """Requests share the weights; a swap waits for them to finish and holds new ones back."""

    def __init__(self) -> None:
        self._active = 0
        self._swapping = False
        self._cond = asyncio.Condition()

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._active += 1
        try:
            yield
        finally:
            async with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @asynccontextmanager
    async def swap(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._swapping)
            self._swapping = True
            await self._cond.wait_for(lambda: self._active == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._swapping = False
                self._cond.notify_all()


__all__ = ["SwapGate"]
