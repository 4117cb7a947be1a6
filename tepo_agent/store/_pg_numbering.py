"""How the PostgreSQL store numbers rows and how its readers wait for those numbers to settle.

The design, and why a cursor built this way never skips a row, is in the docstring of
:mod:`tepo_agent.store.postgres`; these are its three pieces: :func:`take_numbers` (writers),
:func:`settled_horizon` (readers) and :func:`insert_trajectories` (the write that uses them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tepo_agent.errors import StoreError
from tepo_agent.store._records import trajectory_row, turn_row
from tepo_agent.trajectory import Trajectory

NUMBERING_LOCK = 7_405_611_002
"""Advisory lock key: shared while a writer holds unconfirmed numbers, exclusive in readers."""

BATCH_LOCK = 7_405_611_003
"""Advisory lock key held for the instant a batch takes its consecutive numbers."""


def take_numbers(conn: Any, *, seqs: int, score_seqs: int) -> tuple[list[int], list[int]]:
    """``seqs`` new ``seq`` and ``score_seqs`` new ``score_seq`` values, each run consecutive,
    taken under the shared numbering lock (step 1 of the module docstring); call it inside the
    writing transaction, as late as possible."""
    if seqs + score_seqs == 0:
        return [], []
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", [NUMBERING_LOCK])
    batch = seqs > 1 or score_seqs > 1
    if batch:
        # A batch's numbers are consecutive (a GRPO group reads as one run): no other writer
        # takes a number between them. A session lock, released as soon as they are taken.
        conn.execute("SELECT pg_advisory_lock(%s)", [BATCH_LOCK])
    try:
        taken = conn.execute(
            "SELECT nextval('seq_numbers') AS n FROM generate_series(1, %s) "
            "UNION ALL SELECT -nextval('score_seq_numbers') FROM generate_series(1, %s)",
            [seqs, score_seqs],
        ).fetchall()
    finally:
        if batch:
            conn.execute("SELECT pg_advisory_unlock(%s)", [BATCH_LOCK])
    values = [int(r["n"]) for r in taken]
    return sorted(v for v in values if v > 0), sorted(-v for v in values if v < 0)


def insert_trajectories(conn: Any, trajectories: Sequence[Trajectory], now: float) -> None:
    """Insert trajectories and their turns in the caller's open transaction, numbering them."""
    rows = [trajectory_row(t, seq=0, score_seq=None, now=now) for t in trajectories]
    turns = [turn_row(t.id, i, turn) for t in trajectories for i, turn in enumerate(t.turns)]
    ids = [r["id"] for r in rows]
    taken = conn.execute("SELECT id FROM trajectories WHERE id = ANY(%s)", [ids]).fetchone()
    if taken:
        raise StoreError(
            f"trajectory {taken['id']} is already stored; ids are unique, so give each "
            "run a new Trajectory (tepo_agent.trajectory.new_id())"
        )
    scored = [r for r in rows if r["score"] is not None]
    seqs, score_seqs = take_numbers(conn, seqs=len(rows), score_seqs=len(scored))
    for row, seq in zip(rows, seqs, strict=True):
        row["seq"] = seq
    for row, score_seq in zip(scored, score_seqs, strict=True):
        row["score_seq"] = score_seq
    with conn.cursor() as cur:
        cur.executemany(_insert_sql("trajectories", rows[0]), [tuple(r.values()) for r in rows])
        if turns:
            cur.executemany(_insert_sql("turns", turns[0]), [tuple(r.values()) for r in turns])


def settled_horizon(conn: Any, sequence: str) -> int:
    """Steps 2-3 of the design: the highest number of ``sequence`` handed out so far, returned
    once every transaction that may hold a number up to it has ended. Run it in a transaction
    of its own and read the rows in a later statement (the lock is released at its commit)."""
    row = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
    horizon = int(row["last_value"]) if row["is_called"] else int(row["last_value"]) - 1
    conn.execute("SELECT pg_advisory_xact_lock(%s)", [NUMBERING_LOCK])
    return horizon


def _insert_sql(table: str, row: dict[str, Any]) -> str:
    """``INSERT`` for rows shaped like ``row`` (all rows built by one function: same key order)."""
    return f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"
