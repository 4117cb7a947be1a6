"""Several real processes on one store file: concurrent writers with a polling reader, and a
writer killed with SIGKILL mid-loop (docs/architecture.md, invariant 8)."""

from __future__ import annotations

import os
import runpy
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tepo_agent.store import open_store, sqlite_path

# The child processes run this file. ``make(writer, i)`` builds a deterministic trajectory of
# about 1,000 tokens (prompt 120 + 4 assistant turns of 200 + 2 tool blocks of 40), so the test
# can rebuild exactly what each child wrote.
WRITER = """
import sys, time
from pathlib import Path
from tepo_agent.trajectory import Trajectory, Turn


def make(writer, i):
    rnd = writer * 1_000_003 + i
    turns = []
    for k in range(4):
        n = 200
        turns.append(Turn(
            role="assistant",
            token_ids=[(rnd * 7 + k * 31 + j) % 151_000 for j in range(n)],
            text=f"w{writer} t{i} turn {k}",
            logprobs=[-((rnd + j) % 97) / 13.0 for j in range(n)],
            entropies=[((rnd + j * k) % 89) / 17.0 for j in range(n)],
            entropy_kind="exact",
            policy_version=writer,
            finish_reason="stop",
            entropy_mean=k / 3.0,
        ))
        if k < 2:
            turns.append(Turn(
                role="tool", token_ids=list(range(40)), text="42", tool_call_id=f"c{k}",
                tool_name="calculator", tool_args={"expression": f"{i}+{k}"},
                tool_result="42", tool_latency_s=0.001 * k, delta_entropy=(k - 1) / 2.0,
            ))
    return Trajectory(
        task=f"writer {writer} item {i}",
        prompt_token_ids=list(range(120)),
        turns=turns,
        id=f"{writer:08x}{i:024x}",
        group_id=f"g{writer}-{i // 4}",
        score=(i % 5) / 4.0,
        app_tag=f"app{writer}",
        created_at=1.0 + i,
    )


def main():
    from tepo_agent.store import open_store

    db, writer, count, ready, go, report = sys.argv[1:7]
    writer, count = int(writer), int(count)
    store = open_store(db)
    Path(ready).touch()
    while not Path(go).exists():
        time.sleep(0.01)
    with open(report, "a") as out:
        i = 0
        while count < 0 or i < count:
            store.add(make(writer, i))
            out.write(f"{writer:08x}{i:024x}\\n")  # only after the commit returned
            out.flush()
            i += 1
    store.close()


if __name__ == "__main__":
    main()
"""


@pytest.fixture
def writer_script(tmp_path: Path) -> Path:
    path = tmp_path / "writer.py"
    path.write_text(WRITER)
    return path


def _start(script: Path, db: str, writer: int, count: int, tmp: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(script), str(db), str(writer), str(count),
         str(tmp / f"ready{writer}"), str(tmp / "go"), str(tmp / f"report{writer}")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def _wait_ready(tmp: Path, procs: list[subprocess.Popen], n: int) -> None:
    deadline = time.monotonic() + 120
    while not all((tmp / f"ready{w}").exists() for w in range(n)):
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"writer exited early: {p.communicate()[1]}")
        assert time.monotonic() < deadline, "writers did not start"
        time.sleep(0.05)


def _check_file(url: str) -> None:
    """SQLite's own consistency check of the file (other backends' servers check their pages)."""
    path = sqlite_path(url)
    if path is None:
        return
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def _assert_same(got: Any, want: Any) -> None:
    assert got.prompt_token_ids == want.prompt_token_ids
    assert len(got.turns) == len(want.turns)
    for g, w in zip(got.turns, want.turns, strict=True):
        assert g.token_ids == w.token_ids
        assert g.tool_args == w.tool_args and g.delta_entropy == w.delta_entropy
        if w.logprobs is not None:
            assert g.logprobs == pytest.approx(w.logprobs, rel=1e-6)
    assert (got.task, got.score, got.group_id) == (want.task, want.score, want.group_id)


@pytest.mark.slow
def test_four_writers_and_a_polling_reader_lose_nothing(
    store_url: str, tmp_path: Path, writer_script: Path
) -> None:
    db, n_writers, per_writer = store_url, 4, 200
    make = runpy.run_path(str(writer_script))["make"]
    open_store(db).close()  # create + migrate once; the writers also race on open
    procs = [_start(writer_script, db, w, per_writer, tmp_path) for w in range(n_writers)]
    try:
        _wait_ready(tmp_path, procs, n_writers)
        (tmp_path / "go").touch()
        seen: list[int] = []
        with open_store(db) as reader:
            while True:
                done = all(p.poll() is not None for p in procs)
                for row in reader.list(since_seq=seen[-1] if seen else 0, limit=1000):
                    seen.append(row.seq)
                    # a visible trajectory always has all its turns (atomic commit)
                    assert len(reader.get(row.id).turns) == row.num_turns == 6
                if done:
                    break
                time.sleep(0.02)
        outputs = [p.communicate() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        assert "locked" not in err.lower()
    total = n_writers * per_writer
    assert seen == list(range(1, total + 1))  # the reader's cursor never skipped a row
    _check_file(db)
    with open_store(db) as store:
        assert store.count() == total
        for w in range(n_writers):
            assert len(store.list(app_tag=f"app{w}", limit=1000)) == per_writer
            for i in (0, per_writer // 2, per_writer - 1):
                want = make(w, i)
                _assert_same(store.get(want.id), want)
        # every scored trajectory reaches the trainer exactly once, in groups of 4
        groups = store.scored_since(0)
        assert sum(len(g) for g in groups) == total
        assert {len(g) for g in groups} == {4}


@pytest.mark.slow
def test_sigkill_mid_write_keeps_every_committed_trajectory(
    store_url: str, tmp_path: Path, writer_script: Path
) -> None:
    db = store_url
    make = runpy.run_path(str(writer_script))["make"]
    proc = _start(writer_script, db, 0, -1, tmp_path)  # writes until killed
    report = tmp_path / "report0"
    try:
        _wait_ready(tmp_path, [proc], 1)
        (tmp_path / "go").touch()
        deadline = time.monotonic() + 120
        while not report.exists() or report.read_text().count("\n") < 60:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "writer made no progress"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    text = report.read_text()
    committed = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]
    assert len(committed) >= 60
    _check_file(db)
    with open_store(db) as store:
        # everything reported is there; at most the one in flight after its commit is extra
        assert len(committed) <= store.count() <= len(committed) + 1
        for i, tid in enumerate(committed):
            want = make(0, i)
            assert tid == want.id
            _assert_same(store.get(tid), want)
        _check_file(db)
