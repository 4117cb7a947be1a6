"""The KV cache of the rows decoding together, and of one sequence on its own.

Continuous batching needs two operations transformers' :class:`~transformers.DynamicCache` does
not offer: adding rows whose caches have other lengths to a running batch, and taking one row's
keys and values out (to keep them in the prefix cache). :class:`BatchKV` does both with public
parts only: a ``DynamicCache`` built from tensors (``ddp_cache_data``), its
``batch_select_indices``, and the ``keys``/``values`` of its layers.

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

RowKV = tuple[tuple[Tensor, Tensor], ...]
"""One sequence's cache: per layer (keys, values), each (H, L, D) for its L tokens in order."""


def row_length(kv: RowKV) -> int:
    """Number of tokens ``kv`` holds."""
    return int(kv[0][0].shape[1])


class BatchKV:
    """The running rows' cache (a ``DynamicCache``) with the mask of its real columns.

    Args:
        cache: a ``DynamicCache`` whose layers hold (R, H, W, D) keys and values (or nothing yet,
            when W is 0).
        mask: (R, W) long tensor, 1 on real columns.
        config: the model config, so rebuilt caches get the model's layer types.
    """

    def __init__(self, cache: DynamicCache, mask: Tensor, config: Any) -> None:
        self.cache = cache
        self.mask = mask
        self._config = config

    @classmethod
    def from_rows(cls, rows: Sequence[RowKV | None], config: Any, device: torch.device) -> BatchKV:
        """Rows of cached tokens (None: nothing cached) stacked right-aligned into one batch."""
        width = max((row_length(r) for r in rows if r is not None), default=0)
        mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
        if width == 0:
            return cls(DynamicCache(config=config), mask, config)
        template = next(r for r in rows if r is not None)
        layers = []
        for layer, (k0, v0) in enumerate(template):
            keys = k0.new_zeros((len(rows), k0.shape[0], width, k0.shape[2]))
            values = v0.new_zeros((len(rows), v0.shape[0], width, v0.shape[2]))
            for i, row in enumerate(rows):
                if row is not None:
                    n = row_length(row)
                    keys[i, :, width - n :] = row[layer][0]
                    values[i, :, width - n :] = row[layer][1]
            layers.append((keys, values))
        for i, row in enumerate(rows):
            if row is not None:
                mask[i, width - row_length(row) :] = 1
        return cls(DynamicCache(ddp_cache_data=layers, config=config), mask, config)

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def _layers(self) -> list[tuple[Tensor, Tensor]]:
        return [(layer.keys, layer.values) for layer in self.cache.layers]

    def append_columns(self, real: Tensor) -> None:
        """Extend the mask by the columns the next forward pass appends: ``real`` (R, S)."""
        self.mask = torch.cat([self.mask, real.to(self.mask.dtype)], dim=1)

    def select(self, keep: Sequence[int]) -> None:
        """Keep only the rows ``keep`` (in that order), then drop columns no row uses."""
        if not keep:
            self.cache = DynamicCache(config=self._config)
            self.mask = self.mask.new_zeros((0, 0))
            return
        index = torch.tensor(list(keep), dtype=torch.long, device=self.mask.device)
        self.mask = self.mask[index]
        if self.width:
            self.cache.batch_select_indices(index)
        self._trim()

    def _trim(self) -> None:
        used = self.mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else self.width
        if first == 0:
            return
        self.mask = self.mask[:, first:]
        data = [(k[:, :, first:], v[:, :, first:]) for k, v in self._layers()]
        self.cache = DynamicCache(ddp_cache_data=data, config=self._config)

    def extend(self, other: BatchKV) -> None:
        """Add ``other``'s rows after these, left-padding the narrower batch to the wider."""
        if other.rows == 0:
            return
        if self.rows == 0:
            self.cache, self.mask = other.cache, other.mask
            return
        width = max(self.width, other.width)
        a, b = _left_pad_layers(self, width), _left_pad_layers(other, width)
        data = [
            (torch.cat([ka, kb]), torch.cat([va, vb]))
            for (ka, va), (kb, vb) in zip(a, b, strict=True)
        ]
        self.mask = torch.cat([_left_pad(self.mask, width), _left_pad(other.mask, width)])
        self.cache = DynamicCache(ddp_cache_data=data, config=self._config)

    def row(self, r: int) -> RowKV:
        """Row ``r``'s real keys and values, as one contiguous sequence (copies)."""
        real = self.mask[r].bool()
        return tuple((k[r][:, real], v[r][:, real]) for k, v in self._layers())


def _left_pad(t: Tensor, width: int) -> Tensor:
    """``t`` (R, W, ...) with zero columns in front up to ``width`` (dim 1)."""
    missing = width - t.shape[1]
    if missing == 0:
        return t
    pad = t.new_zeros((t.shape[0], missing, *t.shape[2:]))
    return torch.cat([pad, t], dim=1)


def _left_pad_layers(kv: BatchKV, width: int) -> list[tuple[Tensor, Tensor]]:
    """Every layer's (R, H, W, D) keys and values padded in front to ``width`` columns."""
    return [
        (
            _left_pad(k.transpose(1, 2), width).transpose(1, 2),
            _left_pad(v.transpose(1, 2), width).transpose(1, 2),
        )
        for k, v in kv._layers()
    ]


__all__ = ["BatchKV", "RowKV", "row_length"]
