"""One sequence's keys and values outside the running batch: what the prefix cache keeps and
hands out, and what a leaving row leaves it.

Two layouts index the same way (``kv[l][0]`` layer l's keys, ``kv[l][1]`` its values, each
(H, L, D)): :data:`RowKV`, a tuple per layer, and a stacked (layers, 2, H, L, D) tensor, which
the prefix cache uses so that a block or a prefix is one tensor, copied with one op whatever the
number of layers. :class:`RowSource` reads a sequence out in stacked pieces, copying only what is
read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

RowKV = tuple[tuple[Tensor, Tensor], ...]
"""One sequence's cache: per layer (keys, values), each (H, L, D) for its L tokens in order. A
stacked (layers, 2, H, L, D) tensor indexes the same way (``kv[l][0]`` keys, ``kv[l][1]``
values), as the prefix cache hands its prefixes out."""


def row_length(kv: RowKV | Tensor) -> int:
    """Number of tokens ``kv`` holds."""
    return int(kv[0][0].shape[1])


class RowSource:
    """One sequence's cache, read out in stacked pieces (layers, 2, H, n, D) on demand, so that
    a caller that keeps only some of its columns (the prefix cache, its new blocks) copies only
    those, each with one op.

    Args:
        parts: per layer keys then values (2 x layers tensors (H, >= length, D)), whose first
            ``length`` columns are the sequence's tokens in order (views are fine: nothing is
            copied until :meth:`read`).
        length: tokens held.
    """

    def __init__(self, parts: Sequence[Tensor], length: int) -> None:
        self.parts = list(parts)
        self.length = length

    @classmethod
    def of(cls, kv: RowKV | Tensor) -> RowSource:
        """A source over a per-layer or stacked cache."""
        return cls([t for pair in kv for t in pair], row_length(kv))

    def read(self, start: int, end: int) -> Tensor:
        """Columns ``[start, end)`` of every layer as one fresh (layers, 2, H, n, D) tensor."""
        stacked = torch.stack([t[:, start:end] for t in self.parts])
        return stacked.unflatten(0, (len(self.parts) // 2, 2))


__all__ = ["RowKV", "RowSource", "row_length"]
