"""The KV cache of the rows decoding together, and of one sequence on its own.

Continuous batching needs what transformers' :class:`~transformers.DynamicCache` does not offer:
adding rows whose caches have other lengths to a running batch, taking one row's keys and values
out (to keep them in the prefix cache), and a decode step that does not copy the whole cache
(``DynamicLayer.update`` concatenates, copying every cached column of every row at every step:
at 64 rows that copy costs more than the attention itself). :class:`GrowingLayer` is a
``DynamicLayer`` whose keys and values are views of buffers with spare columns, so a step writes
its column in place; :class:`BatchKV` keeps one per model layer and adds and drops rows.

Joining and leaving do not copy the running rows: the buffers have spare rows (up to the batch's
``capacity``) and spare columns in front, so a joining row is written into the next free row
(the batch widens to the left into the spare front columns when the new row is longer), and a
leaving row's place is taken by the last row (one row copied, the order of rows changes: the
caller reorders its own per-row state the same way, :meth:`BatchKV.select`).

Layout: every layer holds keys and values of shape (R, H, W, D) — R rows, H key/value heads, W
columns, D head size — and ``mask`` (R, W) says which columns are real tokens of the row. Rows are
left-padded, so the columns a decode step appends are real for every row. A row's real columns
are its tokens in order, but need not be contiguous: a prefill that reuses a cached prefix leaves
masked columns between the reused part and the newly computed one (attention never looks at
them, and positions are passed explicitly, so the numbers are those of a contiguous row).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from tepo_agent.backends._row_kv import RowKV, RowSource, row_length

SPARE_COLUMNS = 128
"""Columns allocated beyond those in use: a buffer is copied once per this many decode steps."""


FRONT_COLUMNS = 64
"""Spare columns allocated in front of those in use, for joining rows longer than the batch."""


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are the first ``rows`` rows and ``n`` columns
    from column ``start`` of larger buffers (capacity rows, H, C, D); ``update`` writes new
    columns in place and grows the buffers only when full. Everything that reads
    ``keys``/``values`` (attention, mask sizes) sees a normal layer."""

    def __init__(self, reserve_rows: int = 0) -> None:
        super().__init__()
        self._reserve = reserve_rows  # rows to allocate when the first columns arrive
        self._kbuf: Tensor | None = None
        self._vbuf: Tensor | None = None
        self._rows = 0
        self._start = 0
        self._n = 0

    @classmethod
    def holding(
        cls, kbuf: Tensor, vbuf: Tensor, n: int, *, rows: int | None = None, start: int = 0
    ) -> GrowingLayer:
        """A layer over these buffers: ``rows`` rows (all by default), columns
        ``[start, start + n)`` in use."""
        layer = cls()
        layer._hold(kbuf, vbuf, kbuf.shape[0] if rows is None else rows, start, n)
        return layer

    def _hold(self, kbuf: Tensor, vbuf: Tensor, rows: int, start: int, n: int) -> None:
        self._kbuf, self._vbuf = kbuf, vbuf
        self._rows, self._start, self._n = rows, start, n
        self.keys = kbuf[:rows, :, start : start + n]
        self.values = vbuf[:rows, :, start : start + n]
        self.device = kbuf.device
        self.is_initialized = True

    @property
    def capacity(self) -> int:
        """Rows the buffers hold."""
        return 0 if self._kbuf is None else int(self._kbuf.shape[0])

    def update(
        self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any
    ) -> tuple[Tensor, Tensor]:
        end, new = self._start + self._n, key_states.shape[-2]
        if self._kbuf is None or self._vbuf is None or end + new > self._kbuf.shape[-2]:
            self._grow(key_states, value_states, self._n + new)
            end = self._start + self._n
        assert self._kbuf is not None and self._vbuf is not None
        self._kbuf[: self._rows, :, end : end + new] = key_states
        self._vbuf[: self._rows, :, end : end + new] = value_states
        self._hold(self._kbuf, self._vbuf, self._rows, self._start, self._n + new)
        return self.keys, self.values  # type: ignore[return-value]

    def open(self, new: int) -> None:
        """Append ``new`` columns, unwritten: the caller writes them before anything reads them
        (the packed forward, :mod:`._packed`). Needs buffers (a layer holding rows)."""
        assert self._kbuf is not None and self.keys is not None and self.values is not None
        if self._start + self._n + new > self._kbuf.shape[-2]:
            self._grow(self.keys, self.values, self._n + new)
        assert self._kbuf is not None and self._vbuf is not None
        self._hold(self._kbuf, self._vbuf, self._rows, self._start, self._n + new)

    def _grow(self, key_states: Tensor, value_states: Tensor, need: int) -> None:
        k, v = key_states, value_states
        rows = max(self.capacity, k.shape[0], self._reserve)
        width = FRONT_COLUMNS + need + SPARE_COLUMNS
        # columns past n are written by update() before any view shows them: no zeroing
        kbuf = k.new_empty((rows, k.shape[1], width, k.shape[3]))
        vbuf = v.new_empty((rows, v.shape[1], width, v.shape[3]))
        if self._n:
            kbuf[: self._rows, :, FRONT_COLUMNS : FRONT_COLUMNS + self._n] = self.keys
            vbuf[: self._rows, :, FRONT_COLUMNS : FRONT_COLUMNS + self._n] = self.values
        self._rows = k.shape[0]
        self._hold(kbuf, vbuf, self._rows, FRONT_COLUMNS, self._n)

    def drop_front(self, columns: int) -> None:
        """Forget the first ``columns`` columns (no copy)."""
        if self._kbuf is not None and self._vbuf is not None and columns:
            self._hold(self._kbuf, self._vbuf, self._rows, self._start + columns, self._n - columns)

    def drop_back(self, columns: int) -> None:
        """Forget the last ``columns`` columns (no copy)."""
        if self._kbuf is not None and self._vbuf is not None and columns:
            self._hold(self._kbuf, self._vbuf, self._rows, self._start, self._n - columns)

    def can_add(self, rows: int, width: int) -> bool:
        """Whether ``rows`` rows of ``width`` columns fit without reallocating."""
        room_front = self._start if width > self._n else 0
        return self._rows + rows <= self.capacity and width - self._n <= room_front

    def add_rows(self, keys: Tensor, values: Tensor) -> None:
        """Write rows (k, H, w, D) after the running ones, right-aligned (see :meth:`can_add`);
        the batch widens to the left to ``w`` when the rows are longer (the new columns of the
        running rows are zeroed: masked, but attention still multiplies them)."""
        assert self._kbuf is not None and self._vbuf is not None
        width, rows = keys.shape[2], self._rows
        if width > self._n:
            extra = width - self._n
            self._kbuf[:rows, :, self._start - extra : self._start].zero_()
            self._vbuf[:rows, :, self._start - extra : self._start].zero_()
            self._start, self._n = self._start - extra, width
        new = slice(rows, rows + keys.shape[0])
        _place(self._kbuf[new, :, self._start :], keys, self._n)
        _place(self._vbuf[new, :, self._start :], values, self._n)
        self._hold(self._kbuf, self._vbuf, rows + keys.shape[0], self._start, self._n)

    def place_rows(
        self, parts: Sequence[tuple[Tensor, Tensor] | None], lengths: Sequence[int]
    ) -> None:
        """Add rows of ``lengths`` columns after the running ones, right-aligned (see
        :meth:`can_add`): each starts with ``parts``' keys and values (H, c, D) (or nothing),
        its other columns are left unwritten for the caller (the packed step); the padding in
        front of it is zeroed."""
        assert self._kbuf is not None and self._vbuf is not None
        width, rows = max(lengths), self._rows
        if width > self._n:
            extra = width - self._n
            self._kbuf[:rows, :, self._start - extra : self._start].zero_()
            self._vbuf[:rows, :, self._start - extra : self._start].zero_()
            self._start, self._n = self._start - extra, width
        end = self._start + self._n
        for r, (part, length) in enumerate(zip(parts, lengths, strict=True), start=rows):
            first = end - length
            if first > self._start:
                self._kbuf[r, :, self._start : first].zero_()
                self._vbuf[r, :, self._start : first].zero_()
            if part is not None:
                cached = part[0].shape[1]
                self._kbuf[r, :, first : first + cached] = part[0]
                self._vbuf[r, :, first : first + cached] = part[1]
        self._hold(self._kbuf, self._vbuf, rows + len(lengths), self._start, self._n)

    def keep_rows(self, order: Sequence[int]) -> None:
        """Keep rows ``order`` in that order: in place when every row that moves comes from past
        the kept ones (:func:`fill_holes`), else gathered into new buffers."""
        assert self._kbuf is not None and self._vbuf is not None
        kept = len(order)
        moves = [(i, src) for i, src in enumerate(order) if i != src]
        if all(src >= kept for _, src in moves):
            used = slice(self._start, self._start + self._n)
            for i, src in moves:
                self._kbuf[i, :, used] = self._kbuf[src, :, used]
                self._vbuf[i, :, used] = self._vbuf[src, :, used]
            self._hold(self._kbuf, self._vbuf, kept, self._start, self._n)
            return
        index = torch.tensor(list(order), dtype=torch.long, device=self._kbuf.device)
        kbuf, vbuf = torch.empty_like(self._kbuf), torch.empty_like(self._vbuf)
        kbuf[:kept] = self._kbuf[index]
        vbuf[:kept] = self._vbuf[index]
        self._hold(kbuf, vbuf, kept, self._start, self._n)


def fill_holes(rows: int, leaving: set[int] | frozenset[int]) -> list[int]:
    """The order of the rows that stay when ``leaving`` rows leave, such that each leaving row
    below the new count is replaced by a staying row from past it (one row copied per leaving
    row, not every row after it)."""
    count = rows - len(leaving)
    tail = [i for i in range(count, rows) if i not in leaving]
    return [tail.pop() if i in leaving else i for i in range(count)]


class GrowingCache(DynamicCache):
    """A ``DynamicCache`` made of :class:`GrowingLayer` s (given, or created on first use)."""

    def __init__(self, layers: list[GrowingLayer] | None = None, reserve_rows: int = 0) -> None:
        if layers:
            Cache.__init__(self, layers=list(layers))
        else:  # layers made on first use, with room for ``reserve_rows`` rows
            factory = functools.partial(GrowingLayer, reserve_rows)
            Cache.__init__(self, layer_class_to_replicate=factory)  # type: ignore[arg-type]

    def growing_layers(self) -> list[GrowingLayer]:
        return [layer for layer in self.layers if isinstance(layer, GrowingLayer)]


class BatchKV:
    """The running rows' cache (a :class:`GrowingCache`) with the mask of its real columns.

    Args:
        cache: layers holding (R, H, W, D) keys and values (or none yet, when W is 0).
        mask: (R, W) long tensor, 1 on real columns.
        capacity: rows to allocate room for when the buffers are (re)allocated here.
    """

    def __init__(self, cache: GrowingCache, mask: Tensor, capacity: int = 0) -> None:
        self.cache = cache
        self.mask = mask
        self.capacity = capacity

    @classmethod
    def from_rows(
        cls, rows: Sequence[RowKV | Tensor | None], device: torch.device, capacity: int = 0
    ) -> BatchKV:
        """Rows of cached tokens (None: nothing cached) stacked right-aligned into one batch."""
        width = max((row_length(r) for r in rows if r is not None), default=0)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        if width == 0:
            return cls(GrowingCache(reserve_rows=capacity), mask, capacity)
        template = next(r for r in rows if r is not None)
        layers = []
        for layer, (k0, v0) in enumerate(template):
            kbuf, vbuf = _buffers(k0[None], v0[None], max(len(rows), capacity), width)
            for i, row in enumerate(rows):
                _place(kbuf[i : i + 1, :, FRONT_COLUMNS:], _one(row, layer, 0), width)
                _place(vbuf[i : i + 1, :, FRONT_COLUMNS:], _one(row, layer, 1), width)
            layers.append(
                GrowingLayer.holding(kbuf, vbuf, width, rows=len(rows), start=FRONT_COLUMNS)
            )
        for i, row in enumerate(rows):
            if row is not None:
                mask[i, width - row_length(row) :] = 1
        return cls(GrowingCache(layers), mask, capacity)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _layers(self) -> list[tuple[Tensor, Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.growing_layers()]  # type: ignore[misc]

    def layer_views(self) -> list[tuple[Tensor, Tensor]]:
        """Per layer the (R, H, W, D) keys and values: views of the buffers (writes land)."""
        return self._layers()

    def open_column(self) -> None:
        """Append one real, unwritten column to every row (a packed step writes it)."""
        for layer in self.cache.growing_layers():
            layer.open(1)
        self.append_columns(self.mask.new_ones((self.rows, 1)))

    def drop_last_column(self) -> None:
        """Forget every row's last column (undo :meth:`open_column`; no copy)."""
        for layer in self.cache.growing_layers():
            layer.drop_back(1)
        self.mask = self.mask[:, :-1]

    def append_columns(self, real: Tensor) -> None:
        """Extend the mask by the columns the next forward pass appends: ``real`` (R, S)."""
        self.mask = torch.cat([self.mask, real.to(self.mask.dtype)], dim=1)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows ``keep`` (in that order), then drop columns no row uses. In place
        (no row copied but those that move) when ``keep`` comes from :func:`fill_holes`."""
        if not keep:
            self.cache = GrowingCache(reserve_rows=self.capacity)
            self.mask = self.mask.new_zeros((0, 0))
            return
        index = torch.tensor(list(keep), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        if self.width:
            for layer in self.cache.growing_layers():
                layer.keep_rows(keep)
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.width
        if first:
            self.mask = self.mask[:, first:]
            for layer in self.cache.growing_layers():
                layer.drop_front(first)

    def extend(self, other: BatchKV) -> None:
        """Add ``other``'s rows after these, right-aligned: written into the free rows of these
        buffers when they fit, else both copied into new buffers of the wider width."""
        if other.rows == 0:
            return
        width = max(self.width, other.width)
        if self.rows and self._fits(other):
            for layer, (kb, vb) in zip(self.cache.growing_layers(), other._layers(), strict=True):
                layer.add_rows(kb, vb)
        elif self.rows == 0 and other._room() >= self.capacity:
            self.cache = other.cache
        else:
            self.cache = self._joined(other, width)
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])

    def join(
        self,
        rows: Sequence[tuple[RowKV | Tensor | None, int]],
        blank: Callable[[RowKV | Tensor | None, int], RowKV],
    ) -> None:
        """Add rows after these, right-aligned: each its cached ``prefix`` (or none) then ``new``
        real columns left unwritten (a packed step writes them before reading). Written once,
        straight into the free rows of the buffers when they fit; else ``blank(prefix, new)``
        (the same row with its new columns zeroed) goes through :meth:`extend`."""
        lengths = [(0 if p is None else row_length(p)) + new for p, new in rows]
        width, layers = max(self.width, *lengths), self.cache.growing_layers()
        if not self.rows or not all(layer.can_add(len(rows), width) for layer in layers):
            blanks = [blank(prefix, new) for prefix, new in rows]
            self.extend(BatchKV.from_rows(blanks, self.mask.device, self.capacity))
            return
        flat = [None if p is None else _flat(p) for p, _ in rows]
        for i, layer in enumerate(layers):
            parts = [None if f is None else (f[2 * i], f[2 * i + 1]) for f in flat]
            layer.place_rows(parts, lengths)
        first = width - torch.tensor(lengths, device=self.mask.device)
        columns = torch.arange(width, device=self.mask.device)
        real = (columns[None, :] >= first[:, None]).to(self.mask.dtype)
        self.mask = torch.cat([_left_pad(self.mask, width), real])

    def _room(self) -> int:
        """Rows the buffers hold (0 before any)."""
        return min((layer.capacity for layer in self.cache.growing_layers()), default=0)

    def _fits(self, other: BatchKV) -> bool:
        layers = self.cache.growing_layers()
        return bool(layers) and all(layer.can_add(other.rows, other.width) for layer in layers)

    def _joined(self, other: BatchKV, width: int) -> GrowingCache:
        """New buffers holding these rows, then ``other``'s, right-aligned at ``width``."""
        rows = self.rows + other.rows
        mine = self._layers() if self.rows else [None] * len(other._layers())
        layers = []
        for pair, (kb, vb) in zip(mine, other._layers(), strict=True):
            kbuf, vbuf = _buffers(kb, vb, max(rows, self.capacity), width)
            if pair is not None:
                _place(kbuf[: self.rows, :, FRONT_COLUMNS:], pair[0], width)
                _place(vbuf[: self.rows, :, FRONT_COLUMNS:], pair[1], width)
            _place(kbuf[self.rows : rows, :, FRONT_COLUMNS:], kb, width)
            _place(vbuf[self.rows : rows, :, FRONT_COLUMNS:], vb, width)
            layers.append(GrowingLayer.holding(kbuf, vbuf, width, rows=rows, start=FRONT_COLUMNS))
        return GrowingCache(layers)

    def row(self, r: int) -> Tensor:
        """Row ``r``'s real keys and values, as one contiguous sequence: a fresh (layers, 2, H,
        n, D) tensor (``row(r)[l][0]`` layer l's keys)."""
        source = self.row_source(r)
        return source.read(0, source.length)

    def row_source(self, r: int) -> RowSource:
        """Row ``r``'s real keys and values, copied only when read (:class:`RowSource`); read
        it before the batch changes. Its real columns end at the last column; when they are
        contiguous (always, but after a prefill that reused a cached prefix without the packed
        forward) these are views, else the row is gathered once here."""
        real = self.mask[r]
        n = int(real.sum())
        layers = self._layers()
        if bool(real[self.width - n :].all()):
            return RowSource([t[r, :, self.width - n :] for pair in layers for t in pair], n)
        index = real.nonzero().squeeze(1)
        gathered = torch.stack([t[r] for pair in layers for t in pair])[:, :, index]
        return RowSource(gathered.unbind(0), n)


def _buffers(k: Tensor, v: Tensor, rows: int, width: int) -> tuple[Tensor, Tensor]:
    """Uninitialised buffers shaped like ``k``/``v`` (·, H, ·, D) with ``rows`` rows and room
    for ``width`` columns plus the spare ones in front and behind."""
    columns = FRONT_COLUMNS + width + SPARE_COLUMNS
    kbuf = k.new_empty((rows, k.shape[1], columns, k.shape[3]))
    vbuf = v.new_empty((rows, v.shape[1], columns, v.shape[3]))
    return kbuf, vbuf


def _flat(row: RowKV | Tensor) -> Sequence[Tensor]:
    """Per layer keys then values: 2 x layers tensors (H, n, D) (views)."""
    if isinstance(row, Tensor):
        return row.flatten(0, 1).unbind(0)
    return [t for pair in row for t in pair]


def _one(row: RowKV | Tensor | None, layer: int, which: int) -> Tensor | None:
    return None if row is None else row[layer][which][None]


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


__all__ = [
    "FRONT_COLUMNS",
    "SPARE_COLUMNS",
    "BatchKV",
    "GrowingCache",
    "GrowingLayer",
    "RowKV",
    "RowSource",
    "fill_holes",
    "row_length",
]
