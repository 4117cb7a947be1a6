"""The KV cache of the rows decoding together, and of one sequence on its own.

Continuous batching needs what transformers' :class:`~transformers.DynamicCache` does not offer:
adding rows whose caches have other lengths to a running batch, taking one row's keys and values
out (to keep them in the prefix cache), and a decode step that does not copy the whole cache
(``DynamicLayer.update`` concatenates, copying every cached column of every row at every step:
at 64 rows that copy costs more than the attention itself). :class:`GrowingLayer` is a
``DynamicLayer`` whose keys and values are views of buffers with spare columns, so a step writes
its column in place; :class:`BatchKV` keeps one per model layer and adds and drops rows.

Layout: every layer holds keys and values of shape (R, H, W, D) — R rows, H key/value heads, W
columns, D head size — and ``mask`` (R, W) says which columns are real tokens of the row. Rows are
left-padded, so the columns a decode step appends are real for every row. A row's real columns
are its tokens in order, but need not be contiguous: a prefill that reuses a cached prefix leaves
masked columns between the reused part and the newly computed one (attention never looks at
them, and positions are passed explicitly, so the numbers are those of a contiguous row).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

RowKV = tuple[tuple[Tensor, Tensor], ...]
"""One sequence's cache: per layer (keys, values), each (H, L, D) for its L tokens in order."""

SPARE_COLUMNS = 128
"""Columns allocated beyond those in use: a buffer is copied once per this many decode steps."""


def row_length(kv: RowKV) -> int:
    """Number of tokens ``kv`` holds."""
    return int(kv[0][0].shape[1])


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are the first ``n`` columns of larger buffers
    (R, H, capacity, D); ``update`` writes new columns in place and grows the buffers only when
    full. Everything that reads ``keys``/``values`` (attention, mask sizes) sees a normal layer."""

    def __init__(self) -> None:
        super().__init__()
        self._kbuf: Tensor | None = None
        self._vbuf: Tensor | None = None
        self._n = 0

    @classmethod
    def holding(cls, kbuf: Tensor, vbuf: Tensor, n: int) -> GrowingLayer:
        """A layer over these buffers, whose first ``n`` columns are in use."""
        layer = cls()
        layer._hold(kbuf, vbuf, n)
        return layer

    def _hold(self, kbuf: Tensor, vbuf: Tensor, n: int) -> None:
        self._kbuf, self._vbuf, self._n = kbuf, vbuf, n
        self.keys, self.values = kbuf[:, :, :n], vbuf[:, :, :n]
        self.device = kbuf.device
        self.is_initialized = True

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        n, new = self._n, key_states.shape[-2]
        if self._kbuf is None or self._vbuf is None or n + new > self._kbuf.shape[-2]:
            self._grow(key_states, value_states, n + new)
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[:, :, n : n + new] = key_states
        self._vbuf[:, :, n : n + new] = value_states
        self._hold(self._kbuf, self._vbuf, n + new)
        return self.keys, self.values  # type: ignore[return-value]

    def _grow(self, key_states: Tensor, value_states: Tensor, need: int) -> None:
        k, v = key_states, value_states
        # columns past n are written by update() before any view shows them: no zeroing
        kbuf = k.new_empty((k.shape[0], k.shape[1], need + SPARE_COLUMNS, k.shape[3]))
        vbuf = v.new_empty((v.shape[0], v.shape[1], need + SPARE_COLUMNS, v.shape[3]))
        if self._n:
            kbuf[:, :, : self._n] = self.keys
            vbuf[:, :, : self._n] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def batch_select_indices(self, indices: Tensor) -> None:
        if self._kbuf is not None and self._vbuf is not None:
            self._hold(self._kbuf[indices], self._vbuf[indices], self._n)

    def drop_front(self, columns: int) -> None:
        """Forget the first ``columns`` columns (no copy: the buffers become views)."""
        if self._kbuf is not None and self._vbuf is not None and columns:
            self._hold(self._kbuf[:, :, columns:], self._vbuf[:, :, columns:], self._n - columns)


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` made of :class:`GrowingLayer` s (given, or created on first use)."""

    def __init__(self, layers: list[GrowingLayer] | None = None) -> None:
        if layers:
            Cache.__init__(self, layers=list(layers))
        else:
            Cache.__init__(self, layer_class_to_replicate=GrowingLayer)

    def growing_layers(self) -> list[GrowingLayer]:
        return [layer for layer in self.layers if isinstance(layer, GrowingLayer)]


class BatchKV:
    """The running rows' cache (a :class:`GrowingCache`) with the mask of its real columns.

    Args:
        cache: layers holding (R, H, W, D) keys and values (or none yet, when W is 0).
        mask: (R, W) long tensor, 1 on real columns.
    """

    def __init__(self, cache: GrowingCache, mask: Tensor) -> None:
        self.cache = cache
        self.mask = mask

    @classmethod
    def from_rows(cls, rows: Sequence[RowKV | None], device: torch.device) -> BatchKV:
        """Rows of cached tokens (None: nothing cached) stacked right-aligned into one batch."""
        width = max((row_length(r) for r in rows if r is not None), default=0)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        if width == 0:
            return cls(GrowingCache(), mask)
        template = next(r for r in rows if r is not None)
        layers = []
        for layer, (k0, v0) in enumerate(template):
            kbuf = k0.new_empty((len(rows), k0.shape[0], width + SPARE_COLUMNS, k0.shape[2]))
            vbuf = v0.new_empty((len(rows), v0.shape[0], width + SPARE_COLUMNS, v0.shape[2]))
            for i, row in enumerate(rows):
                _place(kbuf[i : i + 1], None if row is None else row[layer][0][None], width)
                _place(vbuf[i : i + 1], None if row is None else row[layer][1][None], width)
            layers.append(GrowingLayer.holding(kbuf, vbuf, width))
        for i, row in enumerate(rows):
            if row is not None:
                mask[i, width - row_length(row) :] = 1
        return cls(GrowingCache(layers), mask)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _layers(self) -> list[tuple[Tensor, Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.growing_layers()]  # type: ignore[misc]

    def append_columns(self, real: Tensor) -> None:
        """Extend the mask by the columns the next forward pass appends: ``real`` (R, S)."""
        self.mask = torch.cat([self.mask, real.to(self.mask.dtype)], dim=1)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows ``keep`` (in that order), then drop columns no row uses."""
        if not keep:
            self.cache = GrowingCache()
            self.mask = self.mask.new_zeros((0, 0))
            return
        index = torch.tensor(list(keep), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        if self.width:
            self.cache.batch_select_indices(index)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.width
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.growing_layers():
                layer.drop_front(first)

    def extend(self, other: BatchKV) -> None:
        """Add ``other``'s rows after these, both right-aligned in buffers of the wider width."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.cache, self.mask = other.cache, other.mask
            return
        width = max(self.width, other.width)
        layers = []
        for (ka, va), (kb, vb) in zip(self._layers(), other._layers(), strict=True):
            rows = self.rows + other.rows
            kbuf = ka.new_empty((rows, ka.shape[1], width + SPARE_COLUMNS, ka.shape[3]))
            vbuf = va.new_empty((rows, va.shape[1], width + SPARE_COLUMNS, va.shape[3]))
            _place(kbuf[: self.rows], ka, width)
            _place(vbuf[: self.rows], va, width)
            _place(kbuf[self.rows :], kb, width)
            _place(vbuf[self.rows :], vb, width)
            layers.append(GrowingLayer.holding(kbuf, vbuf, width))
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.cache = GrowingCache(layers)

    def row(self, r: int) -> RowKV:
        """Row ``r``'s real keys and values, as one contiguous sequence (copies)."""
        real = self.mask[r].bool()
        return tuple((k[r][:, real], v[r][:, real]) for k, v in self._layers())


def _place(buf: Tensor, kv: Tensor | None, width: int) -> None:
    """Write ``kv`` (R, H, n, D) right-aligned at column ``width`` of ``buf`` (R, H, C, D) and
    zero the columns before it: they are masked, but attention still multiplies them, and the
    buffer is uninitialised memory (a NaN there would poison the row)."""
    n = 0 if kv is None else kv.shape[2]
    buf[:, :, : width - n].zero_()
    if kv is not None:
        buf[:, :, width - n : width] = kv


def _left_pad(mask: Tensor, width: int) -> Tensor:
    """``mask`` (R, W) with zero columns in front up to ``width``."""
    return torch.cat([mask.new_zeros((mask.shape[0], width - mask.shape[1])), mask], dim=1)


__all__ = ["SPARE_COLUMNS", "BatchKV", "GrowingCache", "GrowingLayer", "RowKV", "row_length"]
