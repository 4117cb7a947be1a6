"""Prefix caching: the KV of token prefixes already computed, reused by later prompts.

As vLLM's automatic prefix caching does, sequences are cut into blocks of ``block_size`` tokens
and a block is keyed by its parent block and its own tokens, so a block is found only under the
exact prefix it was computed after. Agent traffic repeats two kinds of prefix: the system prompt
with the tool schemas (every run starts with it) and a conversation's earlier turns (turn k+1's
prompt is turn k's prompt, its sampled tokens and the tool result), so a new turn computes only
the tokens after the last full block it shares with an earlier sequence.

A block holds the keys and values of every layer in one tensor (layers, 2, H, block_size, D), so
storing a block is one copy and a lookup one concatenation, whatever the number of layers. The
keys are the token tuples themselves (no hash that could collide), memory is bounded by
``max_bytes`` with least-recently-used eviction (a hit refreshes its ancestors after its
descendants, so a prefix outlives its extensions), and the owner clears the cache on every weight
swap: the KV was computed by the old weights (docs/architecture.md, invariant 7).

Only the backend's worker thread touches an instance; it is not locked.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tepo_agent.backends._row_kv import RowKV, RowSource

_Key = tuple[int, tuple[int, ...]]  # (parent block id, this block's tokens)


@dataclass(frozen=True)
class _Block:
    id: int
    kv: torch.Tensor  # (layers, 2, H, block_size, D): [l, 0] keys, [l, 1] values; its own storage
    nbytes: int


class PrefixCache:
    """Blocks of cached KV under the token prefix that produced them.

    Args:
        max_bytes: memory the blocks may hold; the least recently used go first beyond it.
        block_size: tokens per block; a prompt reuses whole blocks only.
    """

    def __init__(self, max_bytes: int, block_size: int = 16) -> None:
        self.max_bytes = int(max_bytes)
        self.block_size = int(block_size)
        self._blocks: OrderedDict[_Key, _Block] = OrderedDict()
        self._bytes = 0
        self._next_id = 1  # 0 is the root: the parent of every first block

    @property
    def nbytes(self) -> int:
        """Bytes the cached blocks hold now."""
        return self._bytes

    @property
    def blocks(self) -> int:
        return len(self._blocks)

    def clear(self) -> None:
        """Forget every block (after a weight swap)."""
        self._blocks.clear()
        self._bytes = 0

    def lookup(self, tokens: Sequence[int], limit: int) -> tuple[int, torch.Tensor | None]:
        """The longest cached prefix of ``tokens`` of at most ``limit`` tokens, whole blocks.

        Returns its length and its KV (layers, 2, H, n, D) (a fresh tensor: ``kv[l][0]`` is
        layer l's keys, ``kv[l][1]`` its values), or ``(0, None)``.
        """
        bs = self.block_size
        parent, found = 0, []
        for start in range(0, limit - bs + 1, bs):
            key = (parent, tuple(tokens[start : start + bs]))
            block = self._blocks.get(key)
            if block is None:
                break
            found.append((key, block))
            parent = block.id
        if not found:
            return 0, None
        self._touch([key for key, _ in found])
        return len(found) * bs, torch.cat([b.kv for _, b in found], dim=3)

    def store(self, tokens: Sequence[int], kv: RowSource | RowKV | torch.Tensor) -> None:
        """Keep the whole blocks of ``kv``, the cache of ``tokens[:len(kv)]``: a
        :class:`~._kv.RowSource` (only the blocks not cached yet are copied out of it), or a
        row's keys and values (per layer, or stacked as :meth:`lookup` returns them)."""
        if self.max_bytes <= 0:
            return
        source = kv if isinstance(kv, RowSource) else RowSource.of(kv)
        bs = self.block_size
        parent, path = 0, []
        for start in range(0, source.length - bs + 1, bs):
            key = (parent, tuple(int(t) for t in tokens[start : start + bs]))
            block = self._blocks.get(key)
            if block is None:
                block = self._new_block(source, start)
                self._blocks[key] = block
                self._bytes += block.nbytes
            parent = block.id
            path.append(key)
        self._touch(path)
        self._evict()

    def _new_block(self, source: RowSource, start: int) -> _Block:
        # a fresh tensor of exactly the block (a slice would keep the whole row alive and
        # break the byte count)
        kv = source.read(start, start + self.block_size)
        block = _Block(self._next_id, kv, kv.untyped_storage().nbytes())
        self._next_id += 1
        return block

    def _touch(self, path: list[_Key]) -> None:
        # deepest first, so the ancestors are the most recently used and are evicted last
        for key in reversed(path):
            self._blocks.move_to_end(key)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._blocks:
            _, block = self._blocks.popitem(last=False)
            self._bytes -= block.nbytes


__all__ = ["PrefixCache"]
