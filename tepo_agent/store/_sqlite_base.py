"""What the SQLite store's table groups (policies, evaluations, served responses, the report's
aggregates) need from the store they are mixed into: its two transaction primitives.

``write(fn)`` runs ``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction (retried while another
process holds the write lock) and returns what ``fn`` returns; ``read(sql, params)`` runs one
query and returns its rows as dicts. Only modules of ``tepo_agent.store`` use them: callers go
through the operations of :class:`~tepo_agent.store.protocol.Store`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tepo_agent._sqlite import sqlite_utils

Rows = list[dict[str, Any]]


class SqliteTables:
    """Base of the SQLite store's mixins; :class:`~tepo_agent.store.TrajectoryStore` defines the
    attributes declared here."""

    path: Path
    write: Callable[[Callable[[sqlite_utils.Database], Any]], Any]
    read: Callable[..., Rows]

    def _tables(self) -> set[str]:
        rows = self.read("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {r["name"] for r in rows}

    def _columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.read(f"PRAGMA table_info({table})")}


def placeholders(values: Sequence[Any]) -> str:
    """``?, ?, ?`` for ``values``."""
    return ", ".join("?" * len(values))
