"""``open_store``: the store a URL or path names.

- a file path, or ``sqlite:///path`` (``sqlite:////abs/path`` for an absolute one, as
  SQLAlchemy spells it; ``sqlite:///rel/path`` is relative to the working directory):
  :class:`~tepo_agent.store.TrajectoryStore`, one SQLite file;
- ``postgresql://user:password@host:port/dbname`` (or ``postgres://``):
  ``tepo_agent.store.postgres.PostgresStore`` through psycopg 3, imported only then.

Every ``--db`` option and ``db`` configuration field takes either form.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from tepo_agent.errors import StoreError
from tepo_agent.store._store import TrajectoryStore, default_db_path
from tepo_agent.store.protocol import Store

_POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_store_url(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` is a store URL rather than a file path."""
    return isinstance(target, str) and "://" in target


def is_postgres(target: str | os.PathLike[str]) -> bool:
    return is_store_url(target) and urlsplit(str(target)).scheme in _POSTGRES_SCHEMES


def sqlite_path(target: str | os.PathLike[str]) -> Path | None:
    """The file a path or ``sqlite:///`` URL names (None for a PostgreSQL URL); another scheme
    is a :class:`StoreError` that lists the supported ones."""
    if not is_store_url(target):
        return Path(target)
    parts = urlsplit(str(target))
    if parts.scheme in _POSTGRES_SCHEMES:
        return None
    if parts.scheme != "sqlite":
        raise StoreError(
            f"unknown store URL scheme {parts.scheme!r} in {redact(str(target))}; use a file "
            "path, sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    if parts.netloc or not parts.path.startswith("/") or len(parts.path) < 2:
        raise StoreError(
            f"{target} is not a SQLite URL: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db (three slashes, then the path)"
        )
    return Path(unquote(parts.path[1:]))


def redact(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    netloc = f"{parts.username}:***@{host}" if parts.username else f":***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def open_store(
    target: str | os.PathLike[str] | None = None, *, create: bool = True, read_only: bool = False
) -> Store:
    """The store at ``target`` (a path or URL, see the module docstring; None:
    ``$TEPO_AGENT_DB``, else ``./tepo-agent.db``).

    Args:
        create: Whether a missing store may be created (a SQLite file; the tables of an empty
            PostgreSQL database). False: a missing one is a :class:`StoreError`.
        read_only: Never write, not even to migrate (the report and the dashboard).
    """
    if target is None:
        target = os.environ.get("TEPO_AGENT_DB") or default_db_path()
    path = sqlite_path(target)
    if path is not None:
        return TrajectoryStore(path, create=create, read_only=read_only)
    try:
        from tepo_agent.store.postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"{redact(str(target))} names a PostgreSQL store, but PostgreSQL support is not "
            f"available here ({exc}); install it with `pip install 'tepo-agent[postgres]'` "
            "(psycopg 3), or use a SQLite file path"
        ) from exc
    store: Store = PostgresStore(str(target), create=create, read_only=read_only)
    return store
