"""The store's SQLite schema as an ordered list of migrations, and the connection settings.

The schema version lives in ``PRAGMA user_version``. Opening a store applies, in one
``BEGIN IMMEDIATE`` transaction, every migration newer than the file's version, so several
processes opening the same file at once migrate it exactly once. A file written by a newer
tepo-agent (a version above :data:`SCHEMA_VERSION`) is refused rather than guessed at.

To change the schema, append a :class:`Migration`; never edit a released one.

Connection settings (:func:`configure`):

- ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers, so
  application processes, the trainer and ``sqlite3``/Datasette can share the file.
- ``synchronous=NORMAL``: in WAL mode a commit is written to the WAL but not fsync'ed; the WAL is
  synced at checkpoints. The trade-off: a process crash or ``kill -9`` loses nothing that was
  committed (the OS still has the pages), and the file stays consistent; an OS crash or power cut
  can lose the last few commits (never corrupt the file). ``FULL`` would fsync every commit,
  which costs several milliseconds per trajectory on ordinary disks.
- ``foreign_keys=ON``: turns and feedback must point at a stored trajectory.
- ``busy_timeout``: a writer waiting for another writer sleeps instead of failing at once (the
  store also retries with backoff on top of it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from tepo_agent.errors import StoreError


@dataclass(frozen=True)
class Migration:
    """One schema step: run ``statements`` in order to go from ``version - 1`` to ``version``."""

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="policies, trajectories, turns, feedback",
        statements=(
            """CREATE TABLE policies (
                version INTEGER PRIMARY KEY,
                parent INTEGER REFERENCES policies(version),
                path TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('full', 'lora')),
                status TEXT NOT NULL
                    CHECK (status IN ('candidate', 'live', 'rejected', 'retired')),
                metrics TEXT NOT NULL DEFAULT '{}',
                reason TEXT,
                created_at REAL NOT NULL,
                updated_at REAL NOT NULL
            )""",
            # At most one live policy, enforced by the database itself.
            "CREATE UNIQUE INDEX policies_one_live ON policies(status) WHERE status = 'live'",
            """CREATE TABLE trajectories (
                id TEXT PRIMARY KEY,
                seq INTEGER NOT NULL UNIQUE,
                group_id TEXT,
                task TEXT NOT NULL,
                task_id TEXT,
                app_tag TEXT,
                policy_version INTEGER,
                prompt_token_ids BLOB NOT NULL,
                answer TEXT,
                status TEXT NOT NULL,
                score REAL,
                reward REAL,
                num_turns INTEGER NOT NULL,
                num_tokens INTEGER NOT NULL,
                num_tool_calls INTEGER NOT NULL,
                num_entropy_reducing_calls INTEGER NOT NULL,
                metadata TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX trajectories_group ON trajectories(group_id, seq)",
            "CREATE INDEX trajectories_app_tag ON trajectories(app_tag, seq)",
            """CREATE TABLE turns (
                trajectory_id TEXT NOT NULL REFERENCES trajectories(id) ON DELETE CASCADE,
                idx INTEGER NOT NULL,
                role TEXT NOT NULL CHECK (role IN ('assistant', 'tool')),
                text TEXT NOT NULL,
                token_ids BLOB NOT NULL,
                logprobs BLOB,
                entropies BLOB,
                entropy_lower BLOB,
                entropy_upper BLOB,
                entropy_kind TEXT,
                policy_version INTEGER,
                finish_reason TEXT,
                entropy_mean REAL,
                tool_call_id TEXT,
                tool_name TEXT,
                tool_args TEXT,
                tool_result TEXT,
                tool_error TEXT,
                tool_latency_s REAL,
                delta_entropy REAL,
                PRIMARY KEY (trajectory_id, idx)
            )""",
            """CREATE TABLE feedback (
                id INTEGER PRIMARY KEY,
                trajectory_id TEXT NOT NULL REFERENCES trajectories(id) ON DELETE CASCADE,
                source TEXT NOT NULL,
                value REAL NOT NULL,
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX feedback_trajectory ON feedback(trajectory_id)",
        ),
    ),
    Migration(
        version=2,
        description="score_seq cursor for the trainer, train_steps",
        statements=(
            # A trajectory scored after it was written (application feedback) must still reach
            # a trainer whose cursor has passed its seq: the trainer's cursor runs over the
            # order in which trajectories *became scored*, not the order they were written.
            "ALTER TABLE trajectories ADD COLUMN score_seq INTEGER",
            "UPDATE trajectories SET score_seq = seq WHERE score IS NOT NULL",
            "CREATE UNIQUE INDEX trajectories_score_seq ON trajectories(score_seq)",
            """CREATE TABLE train_steps (
                step INTEGER PRIMARY KEY,
                policy_version INTEGER,
                published_version INTEGER,
                cursor_seq INTEGER NOT NULL,
                metrics TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
        ),
    ),
    Migration(
        version=3,
        description="turns.error_kind: why a tool call failed, as data",
        statements=(
            # Back-fill from the wording the agent wrote before the field existed (the only
            # place that wording is still read).
            "ALTER TABLE turns ADD COLUMN error_kind TEXT CHECK (error_kind IN "
            "('malformed', 'unknown_tool', 'tool_error', 'timeout'))",
            """UPDATE turns SET error_kind = CASE
                WHEN substr(tool_error, 1, 26) = 'error: malformed tool call' THEN 'malformed'
                WHEN substr(tool_error, 1, 19) = 'error: unknown tool' THEN 'unknown_tool'
                WHEN substr(tool_error, 1, 16) = 'error: timed out'
                    OR substr(tool_error, 1, 19) = 'error: TimeoutError' THEN 'timeout'
                ELSE 'tool_error' END
            WHERE role = 'tool' AND tool_error IS NOT NULL""",
        ),
    ),
    Migration(
        version=4,
        description="policy_events: each version's history (the policies table keeps only now)",
        statements=(
            # One row per status change, written by the registry in the same transaction as the
            # change itself, so the report's timeline can never disagree with ``policies``.
            # ``detail`` is JSON: the gate's numbers for gated/rejected, the reason, the version
            # a promotion or rollback replaced.
            """CREATE TABLE policy_events (
                id INTEGER PRIMARY KEY,
                version INTEGER NOT NULL REFERENCES policies(version),
                event TEXT NOT NULL CHECK (event IN
                    ('registered', 'gated', 'promoted', 'rejected', 'retired', 'rolled_back')),
                detail TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX policy_events_version ON policy_events(version, id)",
        ),
    ),
    Migration(
        version=5,
        description="evaluations and their item results (tepo-agent eval, gate, demo, compare)",
        statements=(
            # One row per evaluation run; ``summary`` holds the figures (accuracy interval,
            # calls, ΔH, pilot statistic) as JSON so a report can show them per policy version.
            """CREATE TABLE evaluations (
                id INTEGER PRIMARY KEY,
                policy_version INTEGER,
                label TEXT,
                suite TEXT NOT NULL,
                seed INTEGER NOT NULL,
                n INTEGER NOT NULL,
                samples INTEGER NOT NULL,
                temperature REAL NOT NULL,
                entropy_kind TEXT,
                config TEXT NOT NULL DEFAULT '{}',
                summary TEXT NOT NULL DEFAULT '{}',
                created_at REAL NOT NULL
            )""",
            "CREATE INDEX evaluations_policy ON evaluations(policy_version, id)",
            """CREATE TABLE evaluation_items (
                evaluation_id INTEGER NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
                task_id TEXT NOT NULL,
                sample INTEGER NOT NULL,
                suite TEXT NOT NULL,
                needs_tool INTEGER NOT NULL,
                score REAL NOT NULL,
                answer TEXT,
                status TEXT NOT NULL,
                tool_calls INTEGER NOT NULL,
                calls TEXT NOT NULL DEFAULT '[]',
                policy_version INTEGER,
                entropy_kind TEXT,
                PRIMARY KEY (evaluation_id, task_id, sample)
            )""",
        ),
    ),
    Migration(
        version=6,
        description="served_responses: the completions `tepo-agent serve --record` returned",
        statements=(
            # Feedback over HTTP names a completion's response id (or its session); this maps
            # each id to the trajectory it was recorded in (each choice's, for n > 1) and to the
            # key that owns it, so one key cannot score another's trajectories.
            """CREATE TABLE served_responses (
                response_id TEXT NOT NULL,
                trajectory_id TEXT NOT NULL REFERENCES trajectories(id) ON DELETE CASCADE,
                session_id TEXT NOT NULL,
                owner TEXT NOT NULL,
                created_at REAL NOT NULL,
                PRIMARY KEY (response_id, trajectory_id)
            )""",
            "CREATE INDEX served_responses_session ON served_responses(session_id, owner)",
            "CREATE INDEX served_responses_trajectory ON served_responses(trajectory_id)",
        ),
    ),
    Migration(
        version=7,
        description="turns.replica: the serving replica (base URL) that sampled an assistant turn",
        statements=("ALTER TABLE turns ADD COLUMN replica TEXT",),
    ),
)

SCHEMA_VERSION: int = MIGRATIONS[-1].version
"""The schema version this tepo-agent writes."""


def schema_version(conn: sqlite3.Connection) -> int:
    """The file's ``PRAGMA user_version`` (0 for a new, empty file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def apply_migrations(conn: sqlite3.Connection, *, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to ``target``; the caller holds a write transaction.

    Returns the version the file had before. Raises :class:`StoreError` if the file is newer
    than this code knows.
    """
    if not 0 <= target <= SCHEMA_VERSION:
        raise StoreError(
            f"cannot migrate to schema v{target}: known versions are 0..{SCHEMA_VERSION}"
        )
    current = schema_version(conn)
    if current > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema v{current} but this tepo-agent only knows up to "
            f"v{SCHEMA_VERSION}; upgrade tepo-agent to open it"
        )
    for migration in MIGRATIONS:
        if current < migration.version <= target:
            for statement in migration.statements:
                conn.execute(statement)
            # user_version is part of the database header, so it commits with the migration.
            conn.execute(f"PRAGMA user_version = {migration.version:d}")
    return current


def configure(conn: sqlite3.Connection, *, busy_timeout_s: float) -> None:
    """Apply the connection settings described in the module docstring."""
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000):d}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StoreError(
            f"SQLite refused WAL mode (journal_mode is {mode!r}); put the database on a local "
            "filesystem (WAL does not work over most network filesystems)"
        )
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
