"""The conformance suite's fixtures: every test that takes ``store_url`` or ``store`` runs once
per store backend, against a real database.

    STORE_BACKENDS = ["sqlite"]            # one entry per backend; each names a fixture
    def sqlite_store_url(tmp_path): ...    # "<backend>_store_url": a URL to a new, empty store

A backend adds its name to :data:`STORE_BACKENDS` and defines ``<name>_store_url`` (function
scope: every test gets an empty store of its own; a server it needs is started once per session
by its own session fixture). Tests that check one backend's files or settings (SQLite's WAL,
PRAGMAs, BLOB layout, migrations of old files) take ``sqlite_store`` / ``tmp_path`` instead and say
in their docstring that they are SQLite-only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tepo_agent.store import Store, TrajectoryStore, open_store

STORE_BACKENDS: list[str] = ["sqlite", "postgres"]


@pytest.fixture
def sqlite_store_url(tmp_path: Path) -> str:
    """A new SQLite file, named by URL (``sqlite:////abs/path``) to exercise URL selection."""
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def postgres_store_url(postgres_url: str) -> str:
    """An empty PostgreSQL store: the session server's test database with every row removed
    (tests/_postgres.py; the server is started once per session, the tests FAIL without it)."""
    return postgres_url


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty store of each backend in turn."""
    url: str = request.getfixturevalue(f"{request.param}_store_url")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    """An open store of each backend in turn (closed after the test)."""
    with open_store(store_url) as s:
        yield s


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[TrajectoryStore]:
    """A SQLite store at ``tmp_path / "t.db"``, for the SQLite-only tests."""
    with TrajectoryStore(tmp_path / "t.db") as s:
        yield s
