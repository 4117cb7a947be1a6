"""The ``--db`` option every store-reading command shares, and the errors it gives.

A command that reads a trajectory database never creates one: a missing or mistyped path is an
error that names the option and the databases that do exist nearby. Commands that create stores
(``run``, ``serve --db``, the demo) say so in their help and print the path they created.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from tepo_agent.errors import StoreError

if TYPE_CHECKING:
    from tepo_agent.store import TrajectoryStore

DB_HELP = "trajectory database (default: $TEPO_AGENT_DB, else ./tepo-agent.db)"


def db_path(db: str | None) -> Path:
    """``--db`` if given, else ``$TEPO_AGENT_DB``, else ``./tepo-agent.db``."""
    from tepo_agent.store import default_db_path

    return Path(db) if db else default_db_path()


def existing_db(db: str | None) -> Path:
    """The database path, which must exist (see the module docstring)."""
    path = db_path(db)
    if path.is_file():
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


def open_store(db: str | None) -> TrajectoryStore:
    """Open an existing database (never creates one)."""
    from tepo_agent.store import TrajectoryStore

    return TrajectoryStore(existing_db(db), create=False)
