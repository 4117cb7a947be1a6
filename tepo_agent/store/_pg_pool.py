"""A small thread-safe pool of psycopg 3 connections for ``PostgresStore``.

Each store operation borrows one connection, runs one transaction on it and gives it back, so
threads sharing a store never share a connection. Connections are opened lazily (at most
``max_size``; a thread that finds none idle and the pool full waits for one) and closed with the
pool. A connection that broke (server restart, network) is dropped rather than returned.
Processes must not share a pool across ``fork``: each opens its own store.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tepo_agent.errors import ConfigError, StoreError, TepoError
from tepo_agent.store._open import redact


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise StoreError(
            "a postgresql:// store needs psycopg 3; install it with "
            "`pip install 'tepo-agent[postgres]'` (or `pip install 'psycopg[binary]'`)"
        ) from exc
    return psycopg


class ConnectionPool:
    """Up to ``max_size`` autocommit connections to ``url``; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int,
        connect_timeout_s: float,
        settings: dict[str, str] | None = None,
    ) -> None:
        if max_size < 1:
            raise ConfigError(f"max_size must be >= 1, got {max_size}")
        self.url = url
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self.settings = dict(settings or {})
        self._psycopg = _psycopg()
        self._idle: list[Any] = []
        self._open = 0
        self._closed = False
        self._cond = threading.Condition()

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        # Session settings ride on the startup packet: no extra round trip per transaction.
        options = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
        try:
            return self._psycopg.connect(
                self.url,
                autocommit=True,
                row_factory=dict_row,
                connect_timeout=max(1, round(self.connect_timeout_s)),
                application_name="tepo-agent",
                options=options,
            )
        except self._psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to the PostgreSQL store {redact(self.url)}: "
                f"{' '.join(str(exc).split())}; check that "
                "the server is running and the URL's host, port, user and database are right"
            ) from exc

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """Borrow a connection for one operation. One that saw an error is closed, not reused:
        it may hold a session-level advisory lock its failed transaction did not release."""
        conn = self._acquire()
        try:
            yield conn
        except BaseException as exc:
            if not isinstance(exc, TepoError):  # the store's own refusals leave it clean
                conn.close()
            raise
        finally:
            self._release(conn)

    def _acquire(self) -> Any:
        with self._cond:
            while True:
                if self._closed:
                    raise StoreError(
                        f"the store for {redact(self.url)} is closed; open a new store"
                    )
                if self._idle:
                    return self._idle.pop()
                if self._open < self.max_size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            return self._connect()
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _release(self, conn: Any) -> None:
        with self._cond:
            usable = not conn.closed and not conn.broken and not self._closed
            if usable and conn.info.transaction_status == self._psycopg.pq.TransactionStatus.IDLE:
                self._idle.append(conn)
            else:
                self._open -= 1
                conn.close()
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()
