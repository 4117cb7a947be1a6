"""The ``--db`` option every store command shares, and the errors it gives.

``--db`` takes a SQLite file path (or ``sqlite:///PATH``) or a PostgreSQL URL
(``postgresql://USER@HOST/DB``); see :func:`tepo_agent.store.open_store`. A command that reads a
trajectory store never creates one: a missing or mistyped file path is an error that names the
option and the databases that do exist nearby. Commands that create stores (``run``,
``serve --db``, the demo) say so in their help and print the path they created.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from tepo_agent.errors import StoreError

if TYPE_CHECKING:
    from tepo_agent.store import Store

DB_HELP = (
    "trajectory store: a SQLite file (or sqlite:///PATH) or a PostgreSQL URL "
    "postgresql://USER@HOST/DB (default: $TEPO_AGENT_DB, else ./tepo-agent.db)"
)


def db_target(db: str | None) -> str | Path:
    """``--db`` if given, else ``$TEPO_AGENT_DB``, else ``./tepo-agent.db``: a PostgreSQL URL as
    given, a SQLite file as its path."""
    from tepo_agent.store import default_db_path, sqlite_path

    target = db or os.environ.get("TEPO_AGENT_DB") or str(default_db_path())
    path = sqlite_path(target)
    return target if path is None else path


def creates_store(target: str | Path) -> bool:
    """Whether opening ``target`` creates a new SQLite file (to tell the user it did)."""
    return isinstance(target, Path) and not target.exists()


def existing_db(db: str | None) -> str | Path:
    """The store, which must exist (see the module docstring); a URL is checked on opening."""
    path = db_target(db)
    if isinstance(path, str) or path.is_file():
        return path
    if path.exists():
        raise StoreError(f"--db {path} is not a file")
    folder = path.parent if str(path.parent) else Path(".")
    nearby = sorted(p.name for p in folder.glob("*.db")) if folder.is_dir() else []
    close = difflib.get_close_matches(path.name, nearby, n=3, cutoff=0.5)
    if close:
        hint = f"did you mean --db {' or '.join(str(folder / c) for c in close)}?"
    elif nearby:
        hint = f"databases in {folder}: {', '.join(nearby)}."
    else:
        hint = f"`tepo-agent run QUESTION --db {path}` creates one."
    raise StoreError(
        f"no trajectory database at {path} (--db; default $TEPO_AGENT_DB, else ./tepo-agent.db); "
        + hint
    )


def open_store(db: str | None, *, read_only: bool = False) -> Store:
    """Open an existing store (never creates one)."""
    from tepo_agent.store import open_store as open_any

    return open_any(existing_db(db), create=False, read_only=read_only)
