"""What is PostgreSQL's own in the PostgreSQL store (the shared behaviour is the conformance
suite's, tests/store_conformance): its migrations mirror SQLite's, its columns and bytes are
SQLite's, the database enforces one live policy, several processes migrate a new database once,
and read-only / create=False behave as for a SQLite file."""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tepo_agent.errors import StoreError
from tepo_agent.store import TrajectoryStore, open_store, pg_schema, schema
from tepo_agent.store.postgres import PostgresStore
from tepo_agent.trajectory import Trajectory, Turn

# Columns PostgreSQL has that SQLite keeps implicitly (its rowid).
PG_ONLY = {("evaluation_items", "position")}


def test_the_migrations_are_sqlites_version_for_version() -> None:
    assert [m.version for m in pg_schema.MIGRATIONS] == [m.version for m in schema.MIGRATIONS]
    assert [m.description for m in pg_schema.MIGRATIONS] == [
        m.description for m in schema.MIGRATIONS
    ]
    assert pg_schema.SCHEMA_VERSION == schema.SCHEMA_VERSION


def test_every_table_has_sqlites_columns(tmp_path: Path, postgres_url: str) -> None:
    TrajectoryStore(tmp_path / "t.db").close()
    PostgresStore(postgres_url).close()
    lite = sqlite3.connect(tmp_path / "t.db")
    tables = [r[0] for r in lite.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    with psycopg.connect(postgres_url) as pg:
        for table in tables:
            want = {r[1] for r in lite.execute(f"PRAGMA table_info({table})")}
            got = {
                r[0]
                for r in pg.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s",
                    [table],
                )
            }
            assert got - {c for t, c in PG_ONLY if t == table} == want, table
    lite.close()


def test_token_arrays_are_the_same_little_endian_bytes(postgres_url: str) -> None:
    traj = Trajectory(
        task="q",
        prompt_token_ids=[1, 500, 70000, 2**31 - 1],
        turns=[Turn(role="assistant", token_ids=[11, 12], text="x", logprobs=[-0.5, -2.5])],
    )
    with PostgresStore(postgres_url) as store:
        store.add(traj)
    with psycopg.connect(postgres_url) as pg:
        prompt = pg.execute("SELECT prompt_token_ids FROM trajectories").fetchone()[0]
        ids, lps = pg.execute("SELECT token_ids, logprobs FROM turns").fetchone()
        kind = pg.execute(
            "SELECT data_type FROM information_schema.columns "
            "WHERE table_name = 'turns' AND column_name = 'entropies'"
        ).fetchone()[0]
    assert kind == "bytea"
    assert struct.unpack("<4i", prompt) == (1, 500, 70000, 2**31 - 1)
    assert struct.unpack("<2i", ids) == (11, 12)
    assert struct.unpack("<2f", lps) == (-0.5, -2.5)


def test_the_database_itself_allows_one_live_version(postgres_url: str) -> None:
    with PostgresStore(postgres_url) as store:
        store.ensure_base_policy("/base", "full")
        store.register_policy("/c1", kind="full", parent=0, metrics={})
    with psycopg.connect(postgres_url) as pg, pytest.raises(psycopg.errors.UniqueViolation):
        pg.execute("UPDATE policies SET status = 'live' WHERE version = 1")


OPENER = """
import sys
from tepo_agent.store.postgres import PostgresStore
with PostgresStore(sys.argv[1]) as store:
    print(store.schema_version)
"""


def test_processes_opening_a_new_database_at_once_migrate_it_once(postgres_server) -> None:
    url = postgres_server.new_database()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    assert [out.strip() for out, _ in outs] == [str(pg_schema.SCHEMA_VERSION)] * 4
    with psycopg.connect(url) as pg:
        assert pg.execute("SELECT count(*) FROM tepo_schema_version").fetchone()[0] == 1


def test_read_only_refuses_writes_and_create_false_refuses_an_empty_database(
    postgres_server,
) -> None:
    empty = postgres_server.new_database()
    with pytest.raises(StoreError, match="no trajectory store"):
        open_store(empty, create=False)
    with pytest.raises(StoreError, match="no trajectory store"):
        open_store(empty, read_only=True)
    with open_store(empty) as store:
        store.add(Trajectory(task="q", prompt_token_ids=[1], turns=[]))
    with open_store(empty, read_only=True) as reader:
        assert reader.count() == 1
        with pytest.raises(StoreError, match="read-only"):
            reader.add(Trajectory(task="q2", prompt_token_ids=[1], turns=[]))


def test_a_database_from_a_newer_tepo_agent_is_refused(postgres_server) -> None:
    url = postgres_server.new_database()
    PostgresStore(url).close()
    with psycopg.connect(url) as pg:
        pg.execute("UPDATE tepo_schema_version SET version = 999")
    with pytest.raises(StoreError, match="upgrade tepo-agent"):
        PostgresStore(url)


def test_an_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"cannot connect .*server is running"):
        PostgresStore(f"postgresql://nobody@/x?host={tmp_path}", busy_timeout_s=2)


def test_the_password_never_appears_in_messages(tmp_path: Path) -> None:
    url = f"postgresql://tepo:s3cret@/x?host={tmp_path}"
    with pytest.raises(StoreError) as info:
        PostgresStore(url, busy_timeout_s=2)
    assert "s3cret" not in str(info.value)


def test_without_postgresql_the_tests_fail_and_never_skip(tmp_path: Path) -> None:
    """The conformance suite must run: a machine without PostgreSQL fails with what to install."""
    env = {**os.environ, "TEPO_PG_BIN": str(tmp_path)}
    test = "tests/test_store_postgres.py::test_the_database_itself_allows_one_live_version"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", test, "-q", "-p", "no:cacheprovider", "-rs"],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parent.parent, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    assert "1 error" in done.stdout and "skipped" not in done.stdout
    assert "apt-get install postgresql" in done.stdout
