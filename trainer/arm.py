"""One arm of a reward comparison: collect → train → publish rounds from the default, then a
held-out evaluation of the final policy. Resumable at arm granularity.

An arm is (reward kind, seed) under a :class:`Budget` every arm shares. It runs in its own
working directory, in one process: an in-process serving backend follows the arm's registry (each
published version is swapped in before the next round collects), and a :class:`TrainingRun`
trains on the database's newly scored groups::

    ARM/tepo-agent.db     trajectories, train steps, registry, the final evaluation
    ARM/trainer/          the trainer's checkpoints and states
    ARM/result.json       written last, atomically: the arm is complete

A complete arm is never redone; an incomplete one (killed mid-way) is wiped and rerun from the
default, so every finished arm had exactly the budget and nothing more. Publishing here skips the
gate: the comparison measures what each reward does to the policy, not what a gate lets through.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TextIO, get_args

from langchain_core.tools import BaseTool

from tepo_agent.agent.collect import collect
from tepo_agent.agent.graph import TepoAgent
from tepo_agent.agent.state import AgentConfig
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.evaluation import EvalConfig, EvalMeta, ItemResult, evaluate_items, save_evaluation
from tepo_agent.policy.hotswap import InProcessTarget
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.store import Store, TrajectoryStore
from tepo_agent.tasks import (
    KnowledgeBase,
    SuiteName,
    Task,
)
from tepo_agent.tasks.world import EVAL_SEED, suite_tasks, world_tools
from tepo_agent.trainer.config import RewardConfig, RewardKind
from tepo_agent.trainer.eval_gate import GateConfig
from tepo_agent.trainer.loop import TrainConfig
from tepo_agent.trainer.training_run import RunConfig, TrainingRun

_SUITES: tuple[SuiteName, ...] = get_args(SuiteName)


@dataclass(frozen=True)
class Budget:
    """The collection and training budget of one arm (the same for every arm compared).

    Attributes:
        rounds: Collect → train → publish cycles (default 3). Later rounds collect with the
            policy the earlier ones trained (on-policy).
        tasks: Training items per round, spread evenly over the suites (default 16).
        group: Samples per item: the GRPO group (default 8). Bigger groups find more reward
            variance on items a weak policy rarely solves.
        steps: Optimisation steps per round (default 2); each takes tasks·group/steps runs.
        lr: AdamW learning rate (default 3e-4: 1e-3 collapsed the 1 M default to zero reward
            within 20 steps, 3e-4 moved greedy accuracy 0.15 → 0.25 in 60).
        temperature: Sampling temperature of collection (default 1.0: the raw distribution).
        suites: Suites training items come from (default all three).
    """

    rounds: int = 3
    tasks: int = 16
    group: int = 8
    steps: int = 2
    lr: float = 3e-4
    temperature: float = 1.0
    suites: tuple[SuiteName, ...] = _SUITES

    def __post_init__(self) -> None:
        for name in ("rounds", "tasks", "group", "steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0 or self.temperature <= 0:
            raise ConfigError("Budget: lr and temperature must be > 0")
        if not self.suites or any(s not in _SUITES for s in self.suites):
            raise ConfigError(f"Budget.suites must be a non-empty subset of {list(_SUITES)}")

    @property
    def batch(self) -> int:
        """Trajectories per optimisation step."""
        return max(1, self.tasks * self.group // self.steps)

    @classmethod
    def parse(cls, text: str, base: Budget | None = None) -> Budget:
        """``"rounds=2,tasks=16,group=8,steps=2,lr=3e-4"`` over ``base`` (default: defaults)."""
        out = base or cls()
        types = {f.name: f.type for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, _, value = part.partition("=")
            if key not in types or not value:
                raise ConfigError(f"--budget: {part!r} is not KEY=VALUE with KEY in {list(types)}")
            if key == "suites":
                parsed: Any = tuple(value.split("+"))
            elif key in ("lr", "temperature"):
                parsed = float(value)
            else:
                parsed = int(value)
            out = replace(out, **{key: parsed})
        return out


def _world_seed(model: Path, world: Path) -> int:
    """The knowledge-base seed of a world directory: its ``seed`` stamp, else the bootstrap's
    ``kb_seed``, else 0."""
    stamp = world / "seed"
    if stamp.is_file():
        return int(stamp.read_text().strip())
    info = model / "bootstrap.json"
    if info.is_file():
        return int(json.loads(info.read_text()).get("config", {}).get("kb_seed", 0))
    return 0


def training_items(
    model_dir: str | os.PathLike[str],
    suites: tuple[SuiteName, ...],
    n: int,
    seed: int,
    *,
    world_dir: str | os.PathLike[str] | None = None,
) -> tuple[list[Task], list[BaseTool]]:
    """``n`` training items spread over ``suites`` in the default model's own world.

    The world is the one the model was bootstrapped in (``MODEL/world``, or ``world_dir`` for a
    model without one, built from knowledge-base seed 0); ``seed`` (< EVAL_SEED) seeds the item
    generators, so collection never draws a held-out item.
    """
    if seed >= EVAL_SEED:
        raise ConfigError(f"training seed {seed} is a held-out seed; use one below {EVAL_SEED}")
    model = Path(model_dir)
    world = Path(world_dir) if world_dir is not None else model / "world"
    kb = KnowledgeBase(seed=_world_seed(model, world))
    tasks: list[Task] = []
    for i, suite in enumerate(suites):
        k = n // len(suites) + (1 if i < n % len(suites) else 0)
        if k > 0:
            tasks += suite_tasks(suite, kb, k, seed)
    return tasks, world_tools(world)


@dataclass
class ArmResult:
    """A finished arm: its final policy's held-out items and where the time went.

    Attributes:
        reward, seed: The arm.
        items: The final policy's held-out evaluation, item by item.
        phases: Seconds spent collecting, training (with publishing), evaluating, in all.
        train: Per-step trainer metrics (reward, calls, ΔH<0 share, ...), in order.
    """

    reward: str
    seed: int
    items: list[ItemResult]
    phases: dict[str, float] = field(default_factory=dict)
    train: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["items"] = [r.to_json() for r in self.items]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ArmResult:
        return cls(**{**data, "items": [ItemResult.from_json(r) for r in data["items"]]})


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _rounds(
    model: str,
    work: Path,
    reward: RewardKind,
    seed: int,
    budget: Budget,
    backend: TransformersBackend,
    store: Store,
    out: TextIO,
    progress: bool,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The arm's collect → train → publish rounds; returns phase seconds and step metrics."""
    registry = PolicyRegistry(store)
    fmt = ChatFormat.from_pretrained(model)
    train_cfg = TrainConfig(
        reward=RewardConfig(kind=reward), learning_rate=budget.lr, device="cpu",
        batch_trajectories=budget.batch, micro_batch_size=8, seed=seed,
    )  # fmt: skip
    run_dir = str(work / "trainer")
    run_cfg = RunConfig(train=train_cfg, gate=GateConfig(enabled=False), run_dir=run_dir)
    phases = {"collect_s": 0.0, "train_s": 0.0}
    steps: list[dict[str, float]] = []
    with TrainingRun(store.location, run_cfg, base_model=model, out=out) as training:
        for r in range(budget.rounds):
            tasks, tools = training_items(model, budget.suites, budget.tasks, 100 * seed + r)
            agent_cfg = AgentConfig(
                max_tool_calls=6, max_new_tokens=64, max_total_tokens=1024,
                temperature=budget.temperature, seed=1000 * seed + r,
            )  # fmt: skip
            agent = TepoAgent(backend, fmt, tools, agent_cfg, store=store)
            t0 = time.perf_counter()
            tag = f"{reward}-{seed}"
            collect(agent, store, tasks, budget.group, app_tag=tag, progress=progress)
            t1 = time.perf_counter()
            summary = training.run(budget.steps, progress=False)
            steps += [s.metrics for s in summary.steps]
            live = registry.live()
            if live is not None and live.version != 0:
                InProcessTarget(backend).swap(live, registry.get(0))
            phases["collect_s"] += t1 - t0
            phases["train_s"] += time.perf_counter() - t1
    return phases, steps


def run_arm(
    model_dir: str | os.PathLike[str],
    workdir: str | os.PathLike[str],
    reward: RewardKind,
    seed: int,
    budget: Budget,
    held_out: tuple[list[Task], list[BaseTool]],
    *,
    eval_cfg: EvalConfig | None = None,
    log: TextIO | None = None,
    progress: bool = True,
) -> ArmResult:
    """Run (or load, when complete) one arm; see the module docstring."""
    work = Path(workdir)
    done = work / "result.json"
    if done.is_file():
        return ArmResult.from_json(json.loads(done.read_text()))
    if work.exists():
        shutil.rmtree(work)  # an arm killed mid-way starts over from the default
    work.mkdir(parents=True)
    model = str(model_dir)
    started = time.perf_counter()
    store = TrajectoryStore(work / "tepo-agent.db")
    PolicyRegistry(store).ensure_base(model)
    backend = TransformersBackend.from_pretrained(
        model, device="cpu", dtype="float32", max_batch_size=budget.tasks * budget.group
    )
    try:
        out = log if log is not None else sys.stdout
        phases, steps = _rounds(model, work, reward, seed, budget, backend, store, out, progress)
        t0 = time.perf_counter()
        tasks, tools = held_out
        fmt = ChatFormat.from_pretrained(model)
        items = evaluate_items(
            backend, fmt, tasks, tools, eval_cfg or EvalConfig(), progress=progress
        )
        phases["eval_s"] = time.perf_counter() - t0
        live = PolicyRegistry(store).live()
        meta = EvalMeta(
            suite="all", seed=EVAL_SEED, n=len(tasks), label=f"compare {reward} seed {seed}",
            policy_version=live.version if live else None, config={"budget": asdict(budget)},
        )  # fmt: skip
        save_evaluation(store, items, meta)
    finally:
        backend.close()
        store.close()
    phases["total_s"] = time.perf_counter() - started
    result = ArmResult(reward=reward, seed=seed, items=items, phases=phases, train=steps)
    _write_atomic(done, result.to_json())
    return result


__all__ = ["ArmResult", "Budget", "run_arm", "training_items"]
