"""Datasette plugin (loaded by ``tepo-agent trajectories browse`` with ``--plugins-dir``): show
the store's token arrays decoded, ids as integers and logprobs / entropies as floats, instead of
``<Binary: N bytes>``. The layout is the store's: little-endian int32 / float32 BLOBs."""

from __future__ import annotations

from array import array
from typing import Any

from datasette import hookimpl

_IDS = frozenset({"token_ids", "prompt_token_ids"})
_FLOATS = frozenset({"logprobs", "entropies", "entropy_lower", "entropy_upper"})


def decode_cell(column: str, value: Any) -> str | None:
    """The decoded text of a token-array cell, or None for any other cell."""
    if not isinstance(value, bytes) or len(value) % 4:
        return None
    if column in _IDS:
        arr = array("i")
    elif column in _FLOATS:
        arr = array("f")
    else:
        return None
    arr.frombytes(value)
    if array("i", [1]).tobytes()[0] != 1:  # big-endian machine: the store is little-endian
        arr.byteswap()
    if arr.typecode == "f":
        return "[" + ", ".join(f"{x:.4g}" for x in arr) + "]"
    return "[" + ", ".join(str(x) for x in arr) + "]"


@hookimpl
def render_cell(value: Any, column: str, table: str | None) -> str | None:
    if table not in ("trajectories", "turns"):
        return None
    return decode_cell(column, value)
