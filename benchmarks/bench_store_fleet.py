"""A fleet on one store: trajectories/s written by 1, 4 and 8 writer processes, on SQLite and on
PostgreSQL, with a trainer-like reader following the cursor meanwhile, checked exactly-once.

    python benchmarks/bench_store_fleet.py [--per-writer 500] [--writers 1 4 8]
                                           [--stores sqlite postgres]

Each writer is a separate process (tests/_fleet.py: an application server) writing
``--per-writer`` trajectories of about 1,000 tokens (prompt 120, four assistant turns of 200 with
logprobs and entropies, two tool turns); a quarter are written unscored and scored by a second
write (late feedback) after the next trajectory, so the time includes those writes. The writers
start together (a shared start time after their imports); throughput is all trajectories over
the time from the first write to the last. Meanwhile this process polls ``scored_since`` like
the trainer; at the end it checks that nothing was lost, nothing returned twice, and every
scored trajectory seen exactly once.

SQLite: one WAL file on the local disk (synchronous=NORMAL). PostgreSQL: a throwaway server
(tests/_postgres.py, ``durable=True``: fsync on, synchronous_commit=off, the same durability as
SQLite's setting), one database, over a unix socket on the same machine. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _fleet import Follower, finish_writers, start_writers, trajectory_id  # noqa: E402
from _postgres import PostgresServer  # noqa: E402

from tepo_agent.store import open_store  # noqa: E402


def run_once(target: str, writers: int, per_writer: int) -> dict[str, float]:
    """One fleet run on a fresh store at ``target``; returns throughput and the reader's lag."""
    with open_store(target) as store:
        follower = Follower(store)
        procs = start_writers(target, writers, per_writer, delay_s=4.0 + writers)
        while any(p.poll() is None for p in procs):
            follower.poll()
            time.sleep(0.05)
        reports = finish_writers(procs, timeout_s=1800)
        caught_up = time.time()
        while follower.poll():
            pass
        lag = time.time() - caught_up
        expected = {trajectory_id(w, i) for w in range(writers) for i in range(per_writer)}
        duplicates = len(follower.seen) - len(set(follower.seen))
        if duplicates or set(follower.seen) != expected or store.count() != len(expected):
            raise AssertionError(
                f"{target}: {duplicates} duplicates, {len(expected - set(follower.seen))} "
                f"missed, {store.count()} stored of {len(expected)}"
            )
    wall = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    return {"per_s": len(expected) / wall, "wall": wall, "polls": follower.polls, "lag": lag}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-writer", type=int, default=500)
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "postgres"],
                        choices=["sqlite", "postgres"])  # fmt: skip
    args = parser.parse_args()
    server = PostgresServer.start(durable=True) if "postgres" in args.stores else None
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for store in args.stores:
                for writers in args.writers:
                    if server is not None and store == "postgres":
                        target = server.new_database()
                    else:
                        target = str(Path(tmp) / f"fleet-{writers}.db")
                    result = run_once(target, writers, args.per_writer)
                    rows.append((store, writers, result))
                    print(f"{store} {writers} writers: {result}", file=sys.stderr)
    finally:
        if server is not None:
            server.stop()
    print(f"\n{os.cpu_count()} CPU cores, {platform.platform()}, Python "
          f"{platform.python_version()}; {args.per_writer} trajectories per writer\n")  # fmt: skip
    print(
        "| store | writers | trajectories | trajectories/s | wall s | reader polls | exactly once |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for store, writers, r in rows:
        print(f"| {store} | {writers} | {writers * args.per_writer} | {r['per_s']:.0f} | "
              f"{r['wall']:.1f} | {r['polls']:.0f} | yes |")  # fmt: skip


if __name__ == "__main__":
    main()
