"""A fleet on one store: writer processes (application servers) and a trainer-like reader
following the cursor, for tests/test_store_fleet.py and benchmarks/bench_store_fleet.py.

A writer (``python tests/_fleet.py STORE WRITER N START_AT``) waits until the wall clock reaches
``START_AT`` (so every writer has imported and connected before the clock starts), then writes
``N`` deterministic trajectories of about 1,000 tokens: three of every four carry a score at
``add``; the fourth is written unscored and scored by feedback after the next write (late
feedback, which must still reach the trainer). It prints one JSON line: its first and last
write times. :func:`make` rebuilds any trajectory, so a reader can check what it got.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tepo_agent.trajectory import Trajectory, Turn


def trajectory_id(writer: int, i: int) -> str:
    return f"{writer:08x}{i:024x}"


def make(writer: int, i: int) -> Trajectory:
    """Trajectory ``i`` of ``writer``: prompt 120 + 4 assistant turns of 200 + 2 tool turns of 40
    tokens, with logprobs and entropies."""
    rnd = writer * 1_000_003 + i
    turns = []
    for k in range(4):
        n = 200
        turns.append(Turn(
            role="assistant", token_ids=[(rnd * 7 + k * 31 + j) % 151_000 for j in range(n)],
            text=f"w{writer} t{i} turn {k}", logprobs=[-((rnd + j) % 97) / 13.0 for j in range(n)],
            entropies=[((rnd + j * k) % 89) / 17.0 for j in range(n)], entropy_kind="exact",
            policy_version=writer, finish_reason="stop", entropy_mean=k / 3.0,
        ))  # fmt: skip
        if k < 2:
            turns.append(Turn(
                role="tool", token_ids=list(range(40)), text="42", tool_call_id=f"c{k}",
                tool_name="calculator", tool_args={"expression": f"{i}+{k}"}, tool_result="42",
                tool_latency_s=0.001 * k, delta_entropy=(k - 1) / 2.0,
            ))  # fmt: skip
    return Trajectory(
        task=f"writer {writer} item {i}", prompt_token_ids=list(range(120)), turns=turns,
        id=trajectory_id(writer, i), score=None if i % 4 == 3 else (i % 5) / 4.0,
        app_tag=f"app{writer}", created_at=1.0 + i,
    )  # fmt: skip


def late_score(i: int) -> float:
    return ((i * 3) % 5) / 4.0


def write(store_target: str, writer: int, n: int, start_at: float) -> dict[str, float]:
    """The writer loop (see the module docstring); returns its first and last write times."""
    from tepo_agent.store import open_store

    trajectories = [make(writer, i) for i in range(n)]
    with open_store(store_target) as store:
        time.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        pending: list[int] = []
        for i, trajectory in enumerate(trajectories):
            store.add(trajectory)
            for j in pending:
                store.record_feedback(trajectory_id(writer, j), late_score(j), source="fleet")
            pending = [i] if trajectory.score is None else []
        for j in pending:
            store.record_feedback(trajectory_id(writer, j), late_score(j), source="fleet")
        return {"writer": writer, "started": started, "ended": time.time()}


def start_writers(store_target: str, writers: int, n: int, delay_s: float) -> list[Any]:
    """Start ``writers`` writer processes that begin together ``delay_s`` from now."""
    start_at = time.time() + delay_s
    script = str(Path(__file__))
    return [
        subprocess.Popen(
            [sys.executable, script, store_target, str(w), str(n), str(start_at)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(writers)
    ]


def finish_writers(procs: list[Any], timeout_s: float) -> list[dict[str, float]]:
    """Wait for the writers; each must exit 0. Returns their reports."""
    reports = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout_s)
        if proc.returncode != 0:
            raise AssertionError(f"writer exited {proc.returncode}: {err[-3000:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports


@dataclass
class Follower:
    """The trainer's side: polls ``scored_since(cursor)`` and records what each poll returned."""

    store: Any
    cursor: int = 0
    seen: list[str] = field(default_factory=list)
    polls: int = 0

    def poll(self, limit: int = 256) -> int:
        groups = self.store.scored_since(self.cursor, limit=limit)
        self.polls += 1
        for group in groups:
            self.seen.extend(m.id for m in group.members)
        if groups:
            top = max(g.seq for g in groups)
            if top <= self.cursor:
                raise AssertionError(f"the cursor went back: {self.cursor} -> {top}")
            self.cursor = top
        return sum(len(g) for g in groups)


if __name__ == "__main__":
    target, writer_index, count, start = sys.argv[1:5]
    report = write(target, int(writer_index), int(count), float(start))
    print(json.dumps(report))
