"""Copy a whole store into another, SQLite <-> PostgreSQL, and prove the copy field-exact.

``tepo-agent migrate --from tepo-agent.db --to postgresql://host/db`` (and back) runs
:func:`copy_store`:

1. Both stores are opened with :func:`~tepo_agent.store.open_store`, which brings each to the
   current schema version (the source is migrated forward first, as any open would). The
   destination must hold no rows: a copy never merges into a store in use.
2. Every table is copied row by row with every column as stored (ids, ``seq`` and ``score_seq``,
   timestamps, the token arrays' bytes), parents before children, in batches inside ONE
   transaction on the destination: a failed copy leaves it empty.
3. On PostgreSQL the sequences and identity columns are moved past the copied maxima, so the
   next trajectory, feedback or evaluation numbers on from where the source stopped.
4. :func:`verify_copy` compares the two stores table by table: the same row count, and each
   row equal field by field (bytes for bytes, floats bit for bit, in primary-key order).

Both ends are addressed at the table level (not through the protocol), because a copy must keep
what the protocol assigns (numbers, ids, times) rather than assign it anew.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.errors import StoreError
from tepo_agent.store._open import open_store, redact, sqlite_path
from tepo_agent.store.schema import SCHEMA_VERSION


@dataclass(frozen=True)
class Table:
    """A table to copy: its name, its key order (parents first), and its columns' source."""

    name: str
    order: tuple[str, ...]


# Parents before children (foreign keys), each in primary-key order.
TABLES: tuple[Table, ...] = (
    Table("policies", ("version",)),
    Table("policy_events", ("id",)),
    Table("trajectories", ("seq",)),
    Table("turns", ("trajectory_id", "idx")),
    Table("feedback", ("id",)),
    Table("train_steps", ("step",)),
    Table("evaluations", ("id",)),
    Table("evaluation_items", ("evaluation_id", "task_id", "sample")),
    Table("served_responses", ("response_id", "trajectory_id")),
)

_BATCH = 500


class _End:
    """One side of a copy: a raw connection with the few operations the copy needs."""

    def __init__(self, target: str) -> None:
        self.target = target
        path = sqlite_path(target)
        self.kind = "sqlite" if path is not None else "postgres"
        if path is not None:
            self.conn: Any = sqlite3.connect(str(path), isolation_level=None)
            self.mark = "?"
        else:
            import psycopg

            self.conn = psycopg.connect(target)
            self.mark = "%s"

    def columns(self, table: str) -> list[str]:
        if self.kind == "sqlite":
            return [r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")]
        rows = self.conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
            "AND table_schema = current_schema() ORDER BY ordinal_position",
            [table],
        ).fetchall()
        return [r[0] for r in rows]

    def count(self, table: str) -> int:
        return int(self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def rows(self, table: Table, columns: Sequence[str]) -> Iterator[tuple[Any, ...]]:
        """Every row of ``table``, key order (byte order for text, as SQLite sorts it)."""
        collate = ' COLLATE "C"' if self.kind == "postgres" else ""
        keys = ", ".join(f"{k}{collate}" if k not in _NUMERIC_KEYS else k for k in table.order)
        if table.name == "evaluation_items":
            # Items keep their stored order within an evaluation (SQLite's rowid order).
            keys = "evaluation_id, " + ("position" if self.kind == "postgres" else "rowid")
        # PostgreSQL: a server-side cursor, so a large table is never held in memory at once.
        cur = self.conn.cursor() if self.kind == "sqlite" else self.conn.cursor(name="rows")
        cur.execute(f"SELECT {', '.join(columns)} FROM {table.name} ORDER BY {keys}")
        while batch := cur.fetchmany(_BATCH):
            for row in batch:
                yield tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
        cur.close()

    def begin(self) -> None:
        if self.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")

    def insert(self, table: str, columns: Sequence[str], rows: list[tuple[Any, ...]]) -> None:
        marks = ", ".join([self.mark] * len(columns))
        sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
        self.conn.cursor().executemany(sql, rows)

    def finish_numbering(self) -> None:
        """PostgreSQL: move the sequences and identities past the copied rows."""
        if self.kind != "postgres":
            return
        from tepo_agent.store.pg_schema import IDENTITY_COLUMNS

        for sequence, column in (("seq_numbers", "seq"), ("score_seq_numbers", "score_seq")):
            self.conn.execute(
                f"SELECT setval('{sequence}', COALESCE(MAX({column}), 0) + 1, false) "
                "FROM trajectories"
            )
        for table, column in IDENTITY_COLUMNS:
            self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"COALESCE(MAX({column}), 0) + 1, false) FROM {table}"
            )

    def commit(self) -> None:
        self.conn.execute("COMMIT") if self.kind == "sqlite" else self.conn.commit()

    def rollback(self) -> None:
        if self.kind == "sqlite":
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        else:
            self.conn.rollback()

    def close(self) -> None:
        self.conn.close()


_NUMERIC_KEYS = {"version", "id", "seq", "idx", "step", "evaluation_id", "sample"}


def _shared_columns(source: _End, dest: _End, table: str) -> list[str]:
    """The columns both ends have (PostgreSQL's ``evaluation_items.position`` is its own)."""
    theirs = set(dest.columns(table))
    return [c for c in source.columns(table) if c in theirs]


def _prepare(source: str, dest: str) -> None:
    """Open both stores (migrating each to the current version); the destination must be empty."""
    with open_store(source, create=False) as src:
        if src.schema_version != SCHEMA_VERSION:
            raise StoreError(f"{redact(source)} is at schema v{src.schema_version}, not current")
    with open_store(dest) as dst:
        if dst.count() or dst.policies() or dst.evaluations() or dst.train_steps():
            raise StoreError(
                f"{redact(dest)} already holds data; migrate copies into an empty store only "
                "(create a new database or file for the copy)"
            )


def copy_store(
    source: str, dest: str, *, progress: Callable[[str, int], None] | None = None
) -> dict[str, int]:
    """Copy every row of ``source`` into the empty store ``dest`` (paths or URLs; see the
    module docstring) and return the rows copied per table. ``progress(table, n)`` is called
    after each batch with the rows it held."""
    _prepare(source, dest)
    src, dst = _End(source), _End(dest)
    copied: dict[str, int] = {}
    try:
        dst.begin()
        for table in TABLES:
            columns = _shared_columns(src, dst, table.name)
            batch: list[tuple[Any, ...]] = []
            copied[table.name] = 0
            for row in src.rows(table, columns):
                batch.append(row)
                if len(batch) == _BATCH:
                    dst.insert(table.name, columns, batch)
                    copied[table.name] += len(batch)
                    if progress:
                        progress(table.name, len(batch))
                    batch = []
            if batch:
                dst.insert(table.name, columns, batch)
                copied[table.name] += len(batch)
                if progress:
                    progress(table.name, len(batch))
        dst.finish_numbering()
        dst.commit()
    except BaseException:
        dst.rollback()
        raise
    finally:
        src.close()
        dst.close()
    return copied


def count_rows(target: str) -> dict[str, int]:
    """Rows per table of a store (for the progress bar's total and the check)."""
    end = _End(target)
    try:
        return {t.name: end.count(t.name) for t in TABLES}
    finally:
        end.close()


def verify_copy(source: str, dest: str) -> dict[str, int]:
    """Check ``dest`` holds exactly ``source``'s rows: equal counts, and every shared column of
    every row equal (in key order). Returns the rows compared per table; a difference is a
    :class:`StoreError` naming the table, the row's key and the column."""
    src, dst = _End(source), _End(dest)
    compared: dict[str, int] = {}
    try:
        for table in TABLES:
            n_src, n_dst = src.count(table.name), dst.count(table.name)
            if n_src != n_dst:
                raise StoreError(
                    f"{table.name}: {n_src} rows in {redact(source)} but {n_dst} in {redact(dest)}"
                )
            columns = _shared_columns(src, dst, table.name)
            keys = [columns.index(k) for k in table.order]
            for a, b in zip(src.rows(table, columns), dst.rows(table, columns), strict=True):
                if a != b:
                    column = next(c for c, x, y in zip(columns, a, b, strict=True) if x != y)
                    key = tuple(a[i] for i in keys)
                    raise StoreError(
                        f"{table.name} row {key}: column {column} differs after the copy"
                    )
            compared[table.name] = n_src
    finally:
        src.close()
        dst.close()
    return compared


def describe(target: str) -> str:
    """``target`` for messages: a path as given, a URL without its password."""
    path = sqlite_path(target)
    return str(Path(path)) if path is not None else redact(target)
