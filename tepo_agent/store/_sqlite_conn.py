"""The SQLite store's connection: opening (and migrating) the file, and its two transaction
primitives, with the retry that keeps "database is locked" away from callers.

Every write runs in a ``BEGIN IMMEDIATE`` transaction, retried with exponential backoff while
another process holds the write lock, so "database is locked" never reaches the caller unless
the lock stays held for longer than ``busy_timeout_s`` (then :class:`StoreError` says so).

A store opened ``read_only`` uses a ``mode=ro`` connection: it never migrates the file, never
changes its settings and refuses writes, so the report and the dashboard cannot write to a store
that agents and the trainer are writing to. A file of an older schema is read as it is.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from tepo_agent._sqlite import sqlite_utils
from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store._sqlite_report import register_functions
from tepo_agent.store.schema import SCHEMA_VERSION, apply_migrations, configure, schema_version

T = TypeVar("T")

_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def _hint(exc: sqlite3.OperationalError) -> str:
    """What to check for the errors a full or read-only disk gives."""
    text = str(exc).lower()
    causes = ("full", "disk i/o", "readonly", "read-only", "unable to open")
    if any(cause in text for cause in causes):
        return (
            " (the filesystem holding the database may be full or read-only, or the file not "
            "writable: free space or fix the mount or permissions, then retry; nothing of this "
            "write was committed)"
        )
    return ""


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _connect(path: Path, busy_timeout_s: float, read_only: bool) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; every write opens its own BEGIN
    # IMMEDIATE, and sqlite-utils nests its helpers inside it as savepoints.
    target, uri = (path.resolve().as_uri() + "?mode=ro", True) if read_only else (str(path), False)
    try:
        return sqlite3.connect(
            target,
            uri=uri,
            timeout=busy_timeout_s,
            isolation_level=None,
            check_same_thread=False,
        )
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the trajectory database {path}: {exc}") from exc


class SqliteConnection:
    """One connection to a store file, shared by the threads of one process (calls are
    serialised by a lock).

    Args:
        path: The database file; created (and migrated) if missing unless ``create`` is False.
        busy_timeout_s: How long a write waits for other writers before giving up.
        create: Whether a missing file may be created (False for read-only tools like the CLI).
        read_only: Open without writing anything (see the module docstring); implies
            ``create=False``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout_s: float = 30.0,
        create: bool = True,
        read_only: bool = False,
    ) -> None:
        if not busy_timeout_s > 0:
            raise ConfigError(f"busy_timeout_s must be > 0 seconds, got {busy_timeout_s}")
        self.path = Path(path)
        self.busy_timeout_s = float(busy_timeout_s)
        self.read_only = read_only
        if (read_only or not create) and not self.path.exists():
            raise StoreError(
                f"no trajectory database at {self.path}; pass the right path (--db or "
                "$TEPO_AGENT_DB) or create one by running the agent"
            )
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = _connect(self.path, self.busy_timeout_s, read_only)
        conn = self._conn
        self.db = sqlite_utils.Database(conn, execute_plugins=False)
        register_functions(conn)
        try:
            if read_only:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000):d}")
                found = schema_version(conn)
                if found > SCHEMA_VERSION:
                    raise StoreError(
                        f"the database has schema v{found} but this tepo-agent only knows up to "
                        f"v{SCHEMA_VERSION}; upgrade tepo-agent to open it"
                    )
            else:
                self._retry(lambda: configure(conn, busy_timeout_s=self.busy_timeout_s))
                if schema_version(conn) != SCHEMA_VERSION:
                    self.write(lambda db: apply_migrations(db.conn))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"{self.path} is not a usable SQLite database: {exc}") from exc
        except BaseException:
            conn.close()
            raise

    @property
    def location(self) -> str:
        return str(self.path)

    def _retry(self, fn: Callable[[], T]) -> T:
        """Run ``fn``, retrying with jittered exponential backoff while the file is busy."""
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.002
        while True:
            try:
                return fn()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"SQLite error on {self.path}: {exc}{_hint(exc)}") from exc
                if time.monotonic() >= deadline:
                    raise StoreError(
                        f"{self.path} stayed locked by another process for more than "
                        f"{self.busy_timeout_s:g} s ({exc}); find the process holding a long "
                        "write transaction, or raise busy_timeout_s"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.1)

    def write(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run ``fn(db)`` in one ``BEGIN IMMEDIATE`` transaction: all of it commits, or none.

        Retried from the start while another process holds the write lock, so ``fn`` must only
        touch the database (no other side effects). Only the store's own modules use this.
        """

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self.db)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        with self._lock:
            conn = self._open()
            if self.read_only:
                raise StoreError(f"{self.path} is opened read-only; open it without read_only")
            try:
                return self._retry(attempt)
            except sqlite3.IntegrityError as exc:
                raise StoreError(f"write rejected by the schema of {self.path}: {exc}") from exc

    def read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        """Rows of a read-only query as dicts (retried while busy)."""
        with self._lock:
            self._open()
            return self._retry(lambda: list(self.db.query(sql, params)))

    def _open(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store for {self.path} is closed; open a new TrajectoryStore")
        return self._conn

    @property
    def schema_version(self) -> int:
        with self._lock:
            return schema_version(self._open())

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
