"""How the PostgreSQL store numbers rows and how its readers wait for those numbers to settle.

The design, and why a cursor built this way never skips a row, is in the docstring of
:mod:`tepo_agent.store.postgres`; these are its pieces: the two writes that take numbers,
:func:`insert_trajectories` and :func:`apply_feedback`, and the readers' :func:`settled_horizon`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tepo_agent.store._records import trajectory_row, turn_row
from tepo_agent.trajectory import Trajectory

NUMBERING_LOCK = 7_405_611_002
"""Advisory lock key: shared while a writer holds unconfirmed numbers, exclusive in readers."""

BATCH_LOCK = 7_405_611_003
"""Advisory lock key held for the instant a batch takes its consecutive numbers."""


def insert_trajectories(conn: Any, trajectories: Sequence[Trajectory], now: float) -> None:
    """Insert trajectories and their turns in the caller's open transaction, numbering them
    (step 1 of the design). No statement needs another's result, so in pipeline mode the
    whole write is one round trip to the server.

    The numbers come from ``nextval`` inside the INSERT, taken while holding the shared
    numbering lock (until commit) and, for the instant of the INSERT, the session-level batch
    lock: every writer takes its numbers under it, so a batch's numbers are consecutive (a GRPO
    group reads as one run). A duplicate id is the primary key's violation (the caller names it).
    """
    rows = [trajectory_row(t, seq=0, score_seq=None, now=now) for t in trajectories]
    turns = [turn_row(t.id, i, turn) for t in trajectories for i, turn in enumerate(t.turns)]
    columns = [c for c in rows[0] if c not in ("seq", "score_seq")]
    sql = (
        f"INSERT INTO trajectories (seq, score_seq, {', '.join(columns)}) VALUES "
        "(nextval('seq_numbers'), CASE WHEN %s THEN nextval('score_seq_numbers') END, "
        f"{', '.join(['%s'] * len(columns))})"
    )
    params = [[r["score"] is not None, *(r[c] for c in columns)] for r in rows]
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", [NUMBERING_LOCK])
    conn.execute("SELECT pg_advisory_lock(%s)", [BATCH_LOCK])
    with conn.cursor() as cur:
        cur.executemany(sql, params)
        conn.execute("SELECT pg_advisory_unlock(%s)", [BATCH_LOCK])
        if turns:
            cur.executemany(_insert_sql("turns", turns[0]), [tuple(r.values()) for r in turns])


def apply_feedback(conn: Any, trajectory_id: str, value: float, source: str, now: float) -> None:
    """Set the score (latest wins) and keep the feedback row, in the caller's transaction; the
    first score takes a ``score_seq`` under the same locks as :func:`insert_trajectories`
    (``COALESCE`` evaluates ``nextval`` only when the trajectory has none yet; a second first
    feedback waits on the row lock, then sees the number). An unknown id is the feedback row's
    foreign-key violation (the caller names it). One round trip in pipeline mode."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", [NUMBERING_LOCK])
    conn.execute("SELECT pg_advisory_lock(%s)", [BATCH_LOCK])
    conn.execute(
        "UPDATE trajectories SET score = %s, "
        "score_seq = COALESCE(score_seq, nextval('score_seq_numbers')) WHERE id = %s",
        [value, trajectory_id],
    )
    conn.execute("SELECT pg_advisory_unlock(%s)", [BATCH_LOCK])
    conn.execute(
        "INSERT INTO feedback (trajectory_id, source, value, created_at) VALUES (%s, %s, %s, %s)",
        [trajectory_id, source, value, now],
    )


def settled_horizon(conn: Any, sequence: str) -> int:
    """Steps 2-3 of the design: the highest number of ``sequence`` handed out so far, returned
    once every transaction that may hold a number up to it has ended. Run it in autocommit
    mode (or a transaction of its own), so the exclusive lock is released as soon as it is
    granted, and read the rows in a later statement."""
    row = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
    horizon = int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [NUMBERING_LOCK])
    return horizon


def _insert_sql(table: str, row: dict[str, Any]) -> str:
    """``INSERT`` for rows shaped like ``row`` (all rows built by one function: same key order)."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"
