"""The PostgreSQL store's connection side: opening (and migrating) the database, the one
transaction primitive every operation runs in, and the errors it turns into :class:`StoreError`.

See :mod:`tepo_agent.store.postgres` for the store itself and the cursor's design.
"""

from __future__ import annotations

import builtins
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self, TypeVar

from tepo_agent.errors import ConfigError, StoreError
from tepo_agent.store._open import redact
from tepo_agent.store._pg_numbering import settled_horizon
from tepo_agent.store._pg_pool import ConnectionPool
from tepo_agent.store.pg_schema import SCHEMA_VERSION, apply_migrations, schema_version

T = TypeVar("T")

# SQLSTATEs retried from the start of the transaction: serialization failure, deadlock.
_RETRY_STATES = {"40001", "40P01"}


class PgConnection:
    """Pooled connections to one PostgreSQL store, opened and migrated.

    Args:
        url: ``postgresql://user:password@host:port/database`` (libpq's URL form, so
            ``?host=/run/postgresql`` reaches a unix socket); the schema is created or migrated
            on open.
        busy_timeout_s: How long an operation waits for locks held by other transactions.
        create: Whether a database without the store's tables may be given them (False: such
            a database is a :class:`StoreError`, as a missing file is for SQLite).
        read_only: Open without migrating and refuse every write (the report, the dashboard).
        max_connections: Connections this store opens at most (one per concurrent thread).
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_s: float = 30.0,
        create: bool = True,
        read_only: bool = False,
        max_connections: int = 8,
    ) -> None:
        if not busy_timeout_s > 0:
            raise ConfigError(f"busy_timeout_s must be > 0 seconds, got {busy_timeout_s}")
        self.url = url
        self.busy_timeout_s = float(busy_timeout_s)
        self.read_only = read_only
        self._pool = ConnectionPool(
            url,
            max_size=max_connections,
            connect_timeout_s=min(busy_timeout_s, 30.0),
            settings={
                "lock_timeout": f"{int(self.busy_timeout_s * 1000):d}",
                "default_transaction_read_only": "on" if read_only else "off",
            },
        )
        try:
            self._open(create=create)
        except BaseException:
            self._pool.close()
            raise

    def _open(self, *, create: bool) -> None:
        version = self.schema_version
        if version == SCHEMA_VERSION:
            return
        if version == 0 and (self.read_only or not create):
            raise StoreError(
                f"no trajectory store in {self.location} (the database has none of its "
                "tables); pass the right URL (--db or $TEPO_AGENT_DB) or create one by running "
                "the agent with it"
            )
        if version > SCHEMA_VERSION or not self.read_only:
            # A newer schema is refused by apply_migrations with the words to upgrade.
            self._transaction(lambda conn: apply_migrations(conn))

    @property
    def location(self) -> str:
        """The URL without its password."""
        return redact(self.url)

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        with self._pool.connection() as conn:
            yield conn

    def _transaction(
        self, fn: Callable[[Any], T], *, pipeline: bool = False, atomic: bool = True
    ) -> T:
        """Run ``fn(conn)`` in one transaction, retried from the start on a serialization
        failure or deadlock; database errors become :class:`StoreError`. ``pipeline``: send
        the statements without waiting for each answer (for writes whose statements need no
        result). ``atomic=False``: each statement commits on its own (reads of one statement,
        or of rows that never change: no BEGIN/COMMIT round trips). A read-only store's
        connections are READ ONLY: PostgreSQL itself refuses a write."""
        psycopg = self._pool._psycopg
        deadline = time.monotonic() + self.busy_timeout_s
        delay = 0.002
        while True:
            try:
                with self._connection() as conn:
                    if not atomic:
                        return fn(conn)
                    if pipeline:
                        with conn.pipeline(), conn.transaction():
                            return fn(conn)
                    with conn.transaction():
                        return fn(conn)
            except psycopg.Error as exc:
                state = getattr(exc, "sqlstate", None)
                if state in _RETRY_STATES and time.monotonic() < deadline:
                    time.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, 0.1)
                    continue
                raise self._error(exc) from exc

    def _error(self, exc: Exception) -> StoreError:
        state = getattr(exc, "sqlstate", None) or ""
        where = redact(self.url)
        if state == "55P03":
            return StoreError(
                f"{where}: waited more than {self.busy_timeout_s:g} s for a lock held by another "
                f"transaction ({exc}); find the session holding a long transaction "
                "(pg_stat_activity), or raise busy_timeout_s"
            )
        if state == "25006":
            return StoreError(f"{where} was opened read-only; open it writable to change it")
        diag = getattr(exc, "diag", None)
        constraint = getattr(diag, "constraint_name", None)
        # "Key (id)=(abc) already exists." / "Key (trajectory_id)=(abc) is not present ..."
        key = re.search(
            r"\)=\((.*)\) (?:already|is not)", getattr(diag, "message_detail", "") or ""
        )
        named = key.group(1) if key else "?"
        if constraint == "trajectories_pkey":
            return StoreError(
                f"trajectory {named} is already stored; ids are unique, so give each run a new "
                "Trajectory (tepo_agent.trajectory.new_id())"
            )
        if constraint == "feedback_trajectory_id_fkey":
            return StoreError(
                f"no trajectory with id {named!r} in {where}; feedback must name a stored "
                "trajectory (the id the agent returned)"
            )
        if state.startswith("23"):
            return StoreError(f"write rejected by the schema of {where}: {exc}")
        return StoreError(f"PostgreSQL error on {where}: {exc}")

    def _read(self, sql: str, params: Sequence[Any] = ()) -> builtins.list[dict[str, Any]]:
        return self._transaction(lambda conn: conn.execute(sql, params).fetchall(), atomic=False)

    def _settled(self, sequence: str) -> int:
        """:meth:`_horizon` in its own short transaction (the exclusive lock is released at
        once); rows read afterwards by a new statement see every number up to it settled."""
        # Not atomic: the lock statement is its own transaction, so the exclusive lock is taken
        # and released at once (settled_horizon's two statements need no common snapshot).
        return self._transaction(lambda conn: settled_horizon(conn, sequence), atomic=False)

    @property
    def schema_version(self) -> int:
        with self._connection() as conn:
            try:
                return schema_version(conn)
            except self._pool._psycopg.Error as exc:
                raise self._error(exc) from exc

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({redact(self.url)!r})"
