"""Trajectory store throughput: trajectories written per second, one writer and four.

    python benchmarks/bench_store.py [--count 400] [--tokens 1000]

Each trajectory has about ``--tokens`` tokens (a prompt, four assistant turns with logprobs and
entropies, two tool calls), like a short agent run. Writers are forked processes, each with its
own connection, started together on a barrier and writing into one fresh WAL file; the time is
from the barrier to the last commit. Also reported: ``get`` (full decode) per second with one
reader. Prints a markdown table; finishes in well under a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from tepo_agent.store import TrajectoryStore
from tepo_agent.trajectory import Trajectory, Turn


def make(writer: int, i: int, tokens: int) -> Trajectory:
    per_turn = max(1, (tokens - 100) // 4 - 10)
    turns: list[Turn] = []
    for k in range(4):
        turns.append(
            Turn(
                role="assistant",
                token_ids=[(i * 31 + j) % 150_000 for j in range(per_turn)],
                text="x" * per_turn,
                logprobs=[-0.5] * per_turn,
                entropies=[1.25] * per_turn,
                entropy_kind="exact",
                policy_version=0,
                finish_reason="stop",
                entropy_mean=1.25,
            )
        )
        if k < 2:
            turns.append(
                Turn(role="tool", token_ids=list(range(20)), text="42", tool_name="calculator",
                     tool_args={"expression": "6*7"}, tool_result="42", delta_entropy=-0.1)
            )  # fmt: skip
    return Trajectory(
        task=f"bench {writer} {i}", prompt_token_ids=list(range(100)), turns=turns, score=1.0
    )


def _writer(db: str, writer: int, count: int, tokens: int, barrier: mp.Barrier) -> None:
    trajectories = [make(writer, i, tokens) for i in range(count)]
    with TrajectoryStore(db) as store:
        barrier.wait()
        for traj in trajectories:
            store.add(traj)


def bench_writers(db: Path, writers: int, total: int, tokens: int) -> float:
    ctx = mp.get_context("fork")  # children inherit the imports: no per-process startup cost
    barrier = ctx.Barrier(writers + 1)
    per = total // writers
    procs = [
        ctx.Process(target=_writer, args=(str(db), w, per, tokens, barrier)) for w in range(writers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    start = time.perf_counter()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"writer failed with exit code {p.exitcode}")
    return per * writers / (time.perf_counter() - start)


def bench_reads(db: Path, count: int) -> float:
    with TrajectoryStore(db) as store:
        ids = [row.id for row in store.list(limit=count)]
        start = time.perf_counter()
        for tid in ids:
            store.get(tid)
        return len(ids) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400, help="trajectories per run")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens per trajectory")
    args = parser.parse_args()
    tokens = len(make(0, 0, args.tokens).full_token_ids())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        TrajectoryStore(Path(tmp) / "warm.db").close()
        for writers in (1, 4):
            db = Path(tmp) / f"w{writers}.db"
            TrajectoryStore(db).close()
            rate = bench_writers(db, writers, args.count, args.tokens)
            rows.append((f"write, {writers} process{'es' if writers > 1 else ''}", rate))
        rows.append(("get (decode), 1 reader", bench_reads(Path(tmp) / "w1.db", args.count)))
    print(f"trajectories of {tokens} tokens, {args.count} per run\n")
    print("| operation | trajectories/s | tokens/s |")
    print("|---|---:|---:|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} | {rate * tokens:,.0f} |")


if __name__ == "__main__":
    main()
