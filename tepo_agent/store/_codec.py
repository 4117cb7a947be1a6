"""Compact binary encodings for token arrays, and JSON helpers, used by the trajectory store.

Token ids are stored as little-endian int32 and logprobs / entropies as little-endian float32
BLOBs (4 bytes per token, against ~8-20 for JSON text). ``None`` is stored as SQL NULL and an
empty list as an empty BLOB, so the two stay distinct through a round trip. Floats come back as
the nearest float32 value (widened to Python floats), which is the precision the backends
produce them in.
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from tepo_agent.errors import StoreError

_BIG_ENDIAN = sys.byteorder == "big"

_Record = TypeVar("_Record")

# array's "i" and "f" are 4 bytes on every platform CPython supports; check once rather than
# silently writing a different layout on an exotic one.
if array("i").itemsize != 4 or array("f").itemsize != 4:  # pragma: no cover
    raise ImportError("tepo_agent.store needs 4-byte C int and float for its BLOB layout")


def encode_ids(ids: Sequence[int]) -> bytes:
    """Token ids -> little-endian int32 bytes."""
    try:
        arr = array("i", ids)
    except OverflowError as exc:
        raise StoreError(
            f"a token id does not fit in int32 ({exc}); token ids must be in [0, 2**31)"
        ) from exc
    if _BIG_ENDIAN:  # pragma: no cover - no big-endian CI machine
        arr.byteswap()
    return arr.tobytes()


def decode_ids(blob: bytes | None) -> list[int]:
    """Little-endian int32 bytes -> token ids (NULL decodes to an empty list)."""
    if not blob:
        return []
    arr = array("i")
    arr.frombytes(blob)
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


def encode_floats(values: Sequence[float] | None) -> bytes | None:
    """Floats -> little-endian float32 bytes; None stays None (SQL NULL)."""
    if values is None:
        return None
    arr = array("f", values)
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr.tobytes()


def decode_floats(blob: bytes | None) -> list[float] | None:
    """Little-endian float32 bytes -> floats; NULL decodes to None, an empty BLOB to []."""
    if blob is None:
        return None
    arr = array("f")
    arr.frombytes(blob)
    if _BIG_ENDIAN:  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


def dump_json(value: Any) -> str | None:
    """JSON text for a JSON column (None stays NULL). Non-finite floats are refused."""
    if value is None:
        return None
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(
            f"cannot store {type(value).__name__} as JSON ({exc}); metadata, tool arguments and "
            "metrics must be JSON-serialisable with finite numbers"
        ) from exc


def load_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def finite_or_none(value: float | None, what: str) -> float | None:
    """Check a scalar float column value: finite, or None."""
    if value is None:
        return None
    value = float(value)
    if not math.isfinite(value):
        raise StoreError(f"{what} is {value}; store only finite numbers (or None)")
    return value


def from_row(cls: type[_Record], row: Mapping[str, Any], **decoded: Any) -> _Record:
    """The dataclass ``cls`` from a table row whose columns are named as its fields; ``decoded``
    gives the fields whose column holds an encoding (a BLOB, JSON text) already decoded.

    A column the row lacks leaves the field at its default (a file of an older schema, read
    without migrating it); a field without a default must have its column."""
    fields: dict[str, Any] = getattr(cls, "__dataclass_fields__")  # noqa: B009
    values = {name: decoded[name] if name in decoded else row[name] for name in fields
              if name in decoded or name in row}  # fmt: skip
    return cls(**values)
