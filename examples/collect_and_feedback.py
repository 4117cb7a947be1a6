"""Collect production trajectories from several app processes, score them later, see the queue.

What it shows:

1. ``--workers`` application processes (this file run with ``--worker I``) share one SQLite
   store: each answers seeded math questions with the agent, one as a GRPO group of samples
   (``run_group``), one as a plain production request, and prints the stored ids. WAL and a busy
   timeout let them write at the same time.
2. Feedback arrives later and from elsewhere: here the task verifier scores each stored run
   (``TrajectoryStore.record_feedback``; the shell equivalent is ``tepo-agent feedback ID
   VALUE``), and a user's thumbs-up on one run overrides its score (latest feedback wins).
3. What the trainer will see: ``scored_since(cursor)`` returns scored trajectories in the order
   they were scored, grouped by group id (ungrouped ones are groups of one and train against a
   batch baseline). The largest ``seq`` is the next cursor; nothing is returned twice.

Run it::

    python examples/collect_and_feedback.py [--workers 2] [--db tepo-agent.db] [--model DIR]
    tepo-agent trajectories list --db tepo-agent.db
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from tepo_agent import TrajectoryStore
from tepo_agent.tasks import Task, math_suite


def tasks_of(worker: int) -> list[Task]:
    """The questions worker ``worker`` is asked (seeded, so the scorer can regenerate them)."""
    return math_suite(2, seed=worker)


def run_worker(worker: int, db: Path, model: Path | None) -> None:
    """One application process: answer its questions and store every run."""
    from tepo_agent import AgentConfig, ChatFormat, TepoAgent, TransformersBackend
    from tepo_agent.paths import resolve_model_dir
    from tepo_agent.tools import make_calculator_tool

    model = resolve_model_dir(model)
    config = AgentConfig(max_tool_calls=2, max_new_tokens=32, seed=worker)
    with TransformersBackend.from_pretrained(model) as backend, TrajectoryStore(db) as store:
        agent = TepoAgent(
            backend, ChatFormat.from_pretrained(model), [make_calculator_tool()], config, store
        )
        grouped, single = tasks_of(worker)
        tag = f"app-{worker}"
        for result in agent.run_group(grouped.question, 2, task_id=grouped.id, app_tag=tag):
            print(f"worker {worker}: stored {result.trajectory_id} (group of 2, {grouped.id})")
        result = agent.run(single.question, task_id=single.id, app_tag=tag)
        print(f"worker {worker}: stored {result.trajectory_id} (ungrouped, {single.id})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="application processes")
    parser.add_argument("--db", type=Path, default=Path("tepo-agent.db"))
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set in the child processes
    args = parser.parse_args()
    if args.worker is not None:
        run_worker(args.worker, args.db, args.model)
        return

    # 1. several app processes collect into one database at the same time
    print(f"collecting with {args.workers} processes into {args.db}")
    model = ["--model", str(args.model)] if args.model else []
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", str(i), "--db", str(args.db), *model],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.workers)
    ]
    for proc in workers:
        out, _ = proc.communicate()
        print(out, end="")
        if proc.returncode != 0:
            sys.exit(f"a worker failed with exit status {proc.returncode}")

    with TrajectoryStore(args.db) as store:
        # the trainer's cursor before any of this run's feedback: where scored data ends now
        cursor = max((g.seq for g in store.scored_since(0)), default=0)

        # 2. delayed feedback: the verifier scores each run; a user's thumbs-up wins later
        tasks = {t.id: t for i in range(args.workers) for t in tasks_of(i)}
        mine = [s for s in store.list(limit=10_000) if s.task_id in tasks and s.score is None]
        for summary in mine:
            score = tasks[summary.task_id or ""].score(summary.answer)
            store.record_feedback(summary.id, score, source="verifier")
        thumbs_up = mine[-1].id
        store.record_feedback(thumbs_up, 1.0, source="user")  # thumbs up/down mapped to 1/0
        print(f"scored {len(mine)} trajectories; feedback history of {thumbs_up}:")
        for row in store.feedback(thumbs_up):
            print(f"  {row['source']}: {row['value']}")

        # 3. what the trainer will see next, and its next cursor
        groups = store.scored_since(cursor)
        print(f"scored_since({cursor}): {len(groups)} groups")
        for group in groups:
            name = group.group_id or "ungrouped (batch baseline)"
            scores = [m.score for m in group.members]
            versions = sorted({m.policy_version or 0 for m in group.members})
            print(f"  {name}: {len(group)} trajectories, scores {scores}, policy {versions}")
        cursor = max(g.seq for g in groups)
        print(f"next cursor {cursor}: {len(store.scored_since(cursor))} groups waiting after it")


if __name__ == "__main__":
    main()
