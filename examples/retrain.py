"""Periodic retraining: a trainer process publishes, the running agent picks the version up.

What it shows:

1. an application process serving the default model in process, registered as policy version 0,
   with a :class:`~tepo_agent.policy.hotswap.PolicyFollower` that polls the policy registry and
   swaps each newly live version in between requests;
2. production traffic: grouped runs of seeded math questions, scored by the app's feedback;
3. ``tepo-agent train --watch`` started as its own process: it retrains whenever ``--every-n``
   new scored trajectories wait, evaluates the candidate on held-out tasks (the gate) and
   publishes it, or rejects it and the live version keeps serving;
4. the agent answering with the new version without a restart (each stored trajectory names the
   version that sampled it), then ``tepo-agent rollback 0`` and the agent back on version 0.

Run it (about a minute on 2 CPU cores with the default model)::

    python examples/retrain.py [--db retrain/tepo-agent.db] [--model DIR]

The feedback rule here (1.0 when the answer contains the verifier's reference answer, else
0.5 when it contains any digit, else 0) stands in for whatever signal your application has.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

from tepo_agent import (
    AgentConfig,
    ChatFormat,
    PolicyRecord,
    PolicyRegistry,
    TepoAgent,
    TrajectoryStore,
    TransformersBackend,
)
from tepo_agent.paths import resolve_model_dir
from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower
from tepo_agent.tasks import math_suite
from tepo_agent.tools import make_calculator_tool


def feedback(answer: str | None, reference: str) -> float:
    """The application's signal, mapped onto [0, 1]."""
    if answer and reference in answer:
        return 1.0
    return 0.5 if answer and any(ch.isdigit() for ch in answer) else 0.0


def collect(agent: TepoAgent, store: TrajectoryStore, n_tasks: int, group: int) -> None:
    for task in math_suite(n_tasks, seed=7):
        for result in agent.run_group(task.question, group, task_id=task.id, app_tag="retrain"):
            assert result.trajectory_id is not None
            store.record_feedback(result.trajectory_id, feedback(result.answer, task.answer))


def wait_for_publish(
    registry: PolicyRegistry, trainer: subprocess.Popen[str], timeout_s: float
) -> PolicyRecord | None:
    """The first policy the trainer registered (live or rejected), or None on timeout/exit."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and trainer.poll() is None:
        published = [p for p in registry.list() if p.version > 0]
        if published:
            return published[0]
        time.sleep(0.5)
    return None


def wait_until_serving(follower: PolicyFollower, version: int, timeout_s: float = 60) -> None:
    """Block until the follower swapped ``version`` in (it polls every 0.5 s)."""
    deadline = time.monotonic() + timeout_s
    while follower.current_version != version:
        if time.monotonic() > deadline:
            sys.exit(f"v{version} was not swapped in: {follower.last_error!r}")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, default=Path("retrain/tepo-agent.db"))
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for a publish")
    args = parser.parse_args()
    args.db.parent.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_dir(args.model)

    store = TrajectoryStore(args.db)
    registry = PolicyRegistry(store)
    registry.ensure_base(str(model_dir))  # version 0: what this process serves at start
    backend = TransformersBackend.from_pretrained(model_dir)
    follower = PolicyFollower(args.db, InProcessTarget(backend), current_version=0)
    follower.on_swap = lambda rec: print(f"⇄ hot swap: now serving v{rec.version}")
    follower.start(poll_interval_s=0.5)
    config = AgentConfig(max_tool_calls=2, max_new_tokens=32, seed=0)
    agent = TepoAgent(
        backend, ChatFormat.from_pretrained(model_dir), [make_calculator_tool()], config, store
    )
    trainer = None
    try:
        print("collecting 2 tasks x 4 samples on v0 and scoring them")
        collect(agent, store, n_tasks=2, group=4)

        command = [
            sys.executable, "-m", "tepo_agent", "train", "--db", str(args.db),
            "--reward", "sparse", "--watch", "--every-n", "8", "--poll-s", "0.5",
            "--batch", "8", "--lr", "1e-4", "--gate-tasks", "2", "--gate-margin", "0.2",
            "--device", "cpu", "--no-progress",
        ]  # fmt: skip
        print("$ tepo-agent " + " ".join(command[3:]))
        trainer = subprocess.Popen(command, text=True)
        record = wait_for_publish(registry, trainer, args.timeout)
        if record is None:
            sys.exit("the trainer published nothing in time; see its output above")
        print(f"trainer registered v{record.version}: {record.status}")

        if record.status == "live":
            wait_until_serving(follower, record.version)
        result = agent.run("What is 6 * 7?")
        print(f"next request served by v{result.trajectory.policy_version}")

        if record.status == "live":
            print("$ tepo-agent rollback 0")
            rollback = [sys.executable, "-m", "tepo_agent", "rollback", "0", "--db", str(args.db)]
            subprocess.run(rollback, check=True)
            wait_until_serving(follower, 0)
            result = agent.run("What is 6 * 7?")
            print(f"after rollback, served by v{result.trajectory.policy_version}")
        for policy in registry.list():
            print(f"  v{policy.version}: {policy.status} {policy.reason or ''}".rstrip())
    finally:
        if trainer is not None and trainer.poll() is None:
            trainer.send_signal(signal.SIGINT)  # ends --watch between steps
            trainer.wait(timeout=60)
        follower.stop()
        backend.close()
        store.close()


if __name__ == "__main__":
    main()
