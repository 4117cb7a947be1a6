"""A real, throwaway PostgreSQL server for the tests and the store benchmarks.

``PostgresServer.start()`` runs ``initdb`` in a fresh temporary directory and starts the server
with ``pg_ctl``, listening only on a unix socket in that directory (no TCP port, so parallel
sessions never collide). PostgreSQL refuses to run as root: when the tests run as root (as CI
does) the server runs as the ``postgres`` system user that Debian's ``postgresql`` package
creates. ``clean_database()`` hands each test one shared database emptied (every table
truncated, every sequence restarted: a few milliseconds, where creating a database costs up to a
second on a busy machine) and keeps its migrated schema; ``new_database()`` gives a test that
needs one (migrations, a schema of its own) a new, empty database. ``stop()`` shuts the server
down and removes the directory.

The binaries are looked up in ``$TEPO_PG_BIN`` (only there, when it is set), else in
``/usr/lib/postgresql/<newest>/bin`` (Debian's layout), then on ``PATH``. When none is found
the tests FAIL (never skip) with the command that installs it: ``scripts/test.sh`` installs
``postgresql`` from scripts/system-packages.txt.

``durable=False`` (the tests) turns off fsync: a crashed test server is thrown away anyway.
``durable=True`` (the benchmarks) keeps fsync on and sets ``synchronous_commit=off``, the same
trade-off as the SQLite store's ``synchronous=NORMAL`` in WAL mode (a process crash loses no
committed write, an OS crash may lose the last few, the database is never corrupted).
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found; install them with "
    "`apt-get install postgresql` (scripts/test.sh does so when run as root) or point "
    "$TEPO_PG_BIN at the directory holding initdb"
)


class PostgresUnavailable(RuntimeError):
    """The server cannot be set up here; the message says what to install or fix."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl`` (see the module docstring); when
    ``$TEPO_PG_BIN`` is set, that directory only."""
    env = os.environ.get("TEPO_PG_BIN")
    candidates = [Path(env)] if env else []
    debian = Path("/usr/lib/postgresql")
    if not env and debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [p / "bin" for p in reversed(versions)]
    on_path = shutil.which("initdb")
    if not env and on_path:
        candidates.append(Path(on_path).parent)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    where = f" ($TEPO_PG_BIN={env} holds no initdb and pg_ctl)" if env else ""
    raise PostgresUnavailable(INSTALL_HINT + where)


def _run_as() -> list[str]:
    """The command prefix that runs a server binary as an unprivileged user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise PostgresUnavailable(
            "running as root, and PostgreSQL refuses to run as root, but there is no "
            "`postgres` system user to run it as; install Debian's `postgresql` package "
            "(it creates one) or run the tests as an ordinary user"
        ) from exc
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    """One running server; use :meth:`start`, then :meth:`new_database` and :meth:`stop`."""

    root: Path
    bin_dir: Path
    prefix: list[str]
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        bin_dir = find_bin_dir()
        prefix = _run_as()
        # As root the server runs as `postgres`, which must reach the directory: /tmp, not a
        # $TMPDIR under root's home.
        parent = "/tmp" if prefix and Path("/tmp").is_dir() else None
        root = Path(tempfile.mkdtemp(prefix="tepo-pg-", dir=parent))
        if prefix:
            shutil.chown(root, user="postgres", group="postgres")
        server = cls(root=root, bin_dir=bin_dir, prefix=prefix)
        try:
            server._initdb()
            server._pg_ctl_start(durable=durable)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return server

    def _run(self, *argv: str) -> None:
        proc = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, cwd=self.root, check=False
        )
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresUnavailable(
                f"{' '.join(argv[:2])} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}"
            )

    def _initdb(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.root / "data"), "--auth=trust",
            "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip

    def _pg_ctl_start(self, *, durable: bool) -> None:
        settings = [
            "listen_addresses=''",
            f"unix_socket_directories='{self.root}'",
            "max_connections=200",
            "synchronous_commit=off",
        ]
        if not durable:
            settings += ["fsync=off", "full_page_writes=off"]
        options = " ".join(f"-c {s}" for s in settings)
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"),
            "-l", str(self.root / "server.log"), "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        """A ``postgresql://`` URL for ``database`` over the unix socket."""
        return f"postgresql://postgres@/{database}?host={self.root}"

    def new_database(self) -> str:
        """Create an empty database and return its URL."""
        import psycopg

        name = f"t{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def clean_database(self) -> str:
        """The URL of the shared test database, emptied of rows (its tables and schema stay)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = 'shared'").fetchone():
                conn.execute("CREATE DATABASE shared")
        url = self.url("shared")
        with psycopg.connect(url, autocommit=True) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' "
                "AND tablename <> 'tepo_schema_version'"
            )]  # fmt: skip
            if tables:
                conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            for (name,) in conn.execute(
                "SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public'"
            ).fetchall():
                conn.execute(f"ALTER SEQUENCE {name} RESTART")
        return url

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its directory."""
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                      "fast", "-w", "stop")  # fmt: skip
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def stop_on_sigterm(server: PostgresServer) -> Iterator[None]:
    """While inside, a SIGTERM to this process stops ``server`` first, then takes the signal's
    previous action (by default the process dies, as it would have). Without it a pytest run
    killed by SIGTERM (a CI time limit) skips the session fixture's teardown and leaves the
    postmaster running, its directory behind. Main thread only, as Python's signals are."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        server.stop()
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
