"""Load across processes on PostgreSQL: 8 writer processes, with a trainer-like reader following
the cursor meanwhile. Nothing is lost, nothing duplicated, and the cursor sees every scored
trajectory exactly once, late feedback included (the full 8 x 500 is
benchmarks/bench_store_fleet.py; this is the short mode, 8 x 60)."""

from __future__ import annotations

import time

from _fleet import Follower, finish_writers, late_score, make, start_writers, trajectory_id

from tepo_agent.store import open_store

WRITERS, PER_WRITER = 8, 60


def test_eight_writer_processes_and_a_following_reader_lose_and_repeat_nothing(
    postgres_server,
) -> None:
    url = postgres_server.new_database()
    with open_store(url) as store:
        follower = Follower(store)
        procs = start_writers(url, WRITERS, PER_WRITER, delay_s=3.0)
        seen_while_writing = 0
        while any(p.poll() is None for p in procs):
            seen_while_writing += follower.poll(limit=64)
            time.sleep(0.05)
        finish_writers(procs, timeout_s=120)
        while follower.poll(limit=64):
            pass

        expected = {trajectory_id(w, i) for w in range(WRITERS) for i in range(PER_WRITER)}
        assert len(follower.seen) == len(set(follower.seen)), "a trajectory was returned twice"
        assert set(follower.seen) == expected
        assert store.count() == WRITERS * PER_WRITER
        assert follower.polls >= 2 and seen_while_writing > 0, "the reader never ran meanwhile"
        # Every score is the one written (at add, or by late feedback).
        scores = {s.id: s.score for s in store.list(limit=10_000)}
        for w in range(WRITERS):
            for i in range(PER_WRITER):
                want = make(w, i).score if i % 4 != 3 else late_score(i)
                assert scores[trajectory_id(w, i)] == want
        late = trajectory_id(3, 7)
        assert [f["value"] for f in store.feedback(late)] == [late_score(7)]
        sample = store.get(trajectory_id(5, 42))
        assert sample.full_token_ids() == make(5, 42).full_token_ids()
