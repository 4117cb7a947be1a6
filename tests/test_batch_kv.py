"""The running batch's cache (:class:`tepo_agent.backends._kv.BatchKV`): rows join into free rows
of the buffers (widening to the left when longer) and leave by the last row taking their place,
and every row still holds exactly its own keys and values, with a decode step's columns."""

from __future__ import annotations

import torch

from tepo_agent.backends._kv import FRONT_COLUMNS, BatchKV, RowKV, fill_holes

CPU = torch.device("cpu")
LAYERS, HEADS, DIM = 2, 1, 4


def _row(length: int, seed: int) -> RowKV:
    g = torch.Generator().manual_seed(seed)
    return tuple(
        (torch.randn(HEADS, length, DIM, generator=g), torch.randn(HEADS, length, DIM, generator=g))
        for _ in range(LAYERS)
    )


def _equal(a: RowKV, b: RowKV) -> bool:
    return all(
        torch.equal(x, y) for la, lb in zip(a, b, strict=True) for x, y in zip(la, lb, strict=True)
    )


def _decode_step(kv: BatchKV, seed: int) -> RowKV:
    """Append one real column to every row, as a decode step's forward pass does."""
    g = torch.Generator().manual_seed(seed)
    new = tuple(
        (
            torch.randn(kv.rows, HEADS, 1, DIM, generator=g),
            torch.randn(kv.rows, HEADS, 1, DIM, generator=g),
        )
        for _ in range(LAYERS)
    )
    kv.append_columns(torch.ones((kv.rows, 1), dtype=torch.long))
    for i, layer in enumerate(kv.cache.growing_layers()):
        layer.update(*new[i])
    return new


def test_fill_holes_moves_one_row_per_leaving_row() -> None:
    assert fill_holes(8, {2}) == [0, 1, 7, 3, 4, 5, 6]
    assert fill_holes(5, {0, 4}) == [3, 1, 2]
    assert fill_holes(4, {1, 2}) == [0, 3]
    assert fill_holes(3, set()) == [0, 1, 2]


def test_rows_join_leave_and_grow_keeping_their_own_keys_and_values() -> None:
    rows = {0: _row(10, 0), 1: _row(6, 1)}
    kv = BatchKV.from_rows([rows[0], rows[1]], CPU, capacity=6)
    order = [0, 1]
    buffers = [layer.keys.untyped_storage().data_ptr() for layer in kv.cache.growing_layers()]
    for step, (joiner, length) in enumerate([(2, 4), (3, 10 + 30), (4, 12 + FRONT_COLUMNS + 40)]):
        new = _decode_step(kv, 100 + step)
        for i, r in enumerate(order):  # every running row gets its decode column
            rows[r] = tuple(
                (torch.cat([k, nk[i]], 1), torch.cat([v, nv[i]], 1))
                for (k, v), (nk, nv) in zip(rows[r], new, strict=True)
            )
        rows[joiner] = _row(length, joiner)
        kv.extend(BatchKV.from_rows([rows[joiner]], CPU, capacity=6))
        order.append(joiner)
        for i, r in enumerate(order):
            assert _equal(kv.row(i), rows[r]), (step, r)
        if step < 2:  # written into free rows (widened into the front columns): no new buffers
            now = [layer.keys.untyped_storage().data_ptr() for layer in kv.cache.growing_layers()]
            assert now == buffers
    keep = fill_holes(len(order), {1})
    kv.select(keep)
    order = [order[i] for i in keep]
    for i, r in enumerate(order):
        assert _equal(kv.row(i), rows[r])
    assert kv.mask.sum(dim=1).tolist() == [rows[r][0][0].shape[1] for r in order]


def _nan_blank(prefix: RowKV | torch.Tensor | None, new: int) -> RowKV:
    """A blank row whose new columns are NaN: they must be overwritten before being read."""
    assert prefix is not None
    nan = torch.full((HEADS, new, DIM), float("nan"))
    return tuple((torch.cat([k, nan], 1), torch.cat([v, nan], 1)) for k, v in prefix)


def test_joining_rows_are_written_once_into_free_rows_with_zeroed_padding() -> None:
    rows = {0: _row(10, 0), 1: _row(6, 1)}
    kv = BatchKV.from_rows([rows[0], rows[1]], CPU, capacity=6)
    buffers = [layer.keys.untyped_storage().data_ptr() for layer in kv.cache.growing_layers()]
    for layer in kv.cache.growing_layers():  # the free rows hold garbage, as new_empty may
        layer._kbuf[2:].fill_(float("nan"))
        layer._vbuf[2:].fill_(float("nan"))
    short = torch.stack([torch.stack(pair) for pair in _row(3, 2)])  # stacked, as cached
    long = _row(20, 3)  # longer than the batch: it widens to the left
    kv.join([(short, 2), (long, 1)], _nan_blank)
    now = [layer.keys.untyped_storage().data_ptr() for layer in kv.cache.growing_layers()]
    assert now == buffers and kv.rows == 4 and kv.width == 21
    assert kv.mask.sum(dim=1).tolist() == [10, 6, 5, 21]
    for i in (0, 1):  # the running rows are untouched; their new front columns are zeros
        assert _equal(kv.row(i), rows[i])
        assert all(not k[i].isnan().any() for k, _ in kv.layer_views())
    for (k, v), (sk, sv), (lk, lv) in zip(kv.layer_views(), short, long, strict=True):
        assert torch.equal(k[2, :, :16], torch.zeros(HEADS, 16, DIM))  # padding: zeroed
        assert torch.equal(k[2, :, 16:19], sk) and torch.equal(v[2, :, 16:19], sv)
        assert torch.equal(k[3, :, :20], lk) and torch.equal(v[3, :, :20], lv)
    # into an empty batch (no buffers to write into): the blank rows, as they are
    empty = BatchKV.from_rows([], CPU, capacity=6)
    empty.join([(short, 2)], _nan_blank)
    assert empty.rows == 1 and empty.row(0)[:, :, :, 3:].isnan().all()


def test_a_row_with_masked_columns_between_its_real_ones_reads_back_in_order() -> None:
    # HF's prefill after a cached prefix leaves masked columns between the prefix and the
    # newly computed tokens (left-padding of the shorter prompts): the row reads past them
    prefix = _row(3, 0)
    kv = BatchKV.from_rows([prefix], CPU, capacity=2)
    g = torch.Generator().manual_seed(1)
    new = [(torch.randn(1, HEADS, 4, DIM, generator=g), torch.randn(1, HEADS, 4, DIM, generator=g))]
    new.append(
        (torch.randn(1, HEADS, 4, DIM, generator=g), torch.randn(1, HEADS, 4, DIM, generator=g))
    )
    kv.append_columns(torch.tensor([[0, 0, 1, 1]]))
    for layer, (k, v) in zip(kv.cache.growing_layers(), new, strict=True):
        layer.update(k, v)
    want = tuple(
        (torch.cat([pk, k[0, :, 2:]], 1), torch.cat([pv, v[0, :, 2:]], 1))
        for (pk, pv), (k, v) in zip(prefix, new, strict=True)
    )
    assert _equal(kv.row(0), want)
    source = kv.row_source(0)
    assert source.length == 5 and torch.equal(source.read(2, 4)[1][0], want[1][0][:, 2:4])
