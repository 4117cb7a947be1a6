"""The per-item evaluator: run the agent on held-out tasks and record what each run did.

This is the API every evaluation goes through (``tepo-agent eval``, the publishing gate, the
demo's before/after, ``tepo-agent compare``, the default model's ``bootstrap.json`` figures)::

    from tepo_agent.evaluation import EvalConfig, evaluate_items, summarize

    items = evaluate_items(backend, chat_format, tasks, tools, EvalConfig(samples=1))
    report = summarize(items)          # accuracy with its interval, calls, ΔH, pilot statistic

Runs are not stored as trajectories (held-out runs must never reach the trainer); the caller
may store the :class:`ItemResult` s in the evaluation tables (``evaluation.records``). All runs
of an evaluation are in flight at once (bounded by ``EvalConfig.concurrency``), so the backend
batches them: a group's samples and different items decode together.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from langchain_core.tools import BaseTool
from tqdm import tqdm

from tepo_agent.agent.graph import AgentResult, TepoAgent
from tepo_agent.agent.state import AgentConfig
from tepo_agent.agent.sync import run_sync
from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.evaluation.calls import CallOutcome, call_outcomes
from tepo_agent.tasks import Task

CORRECT_AT = 0.5
"""A run is *correct* when its verifier score is at least this (exact and numeric verifiers
score 0 or 1; an F1 score counts as correct from 0.5)."""


@dataclass(frozen=True)
class EvalConfig:
    """How held-out items are run.

    Attributes:
        samples: Runs per item (default 1). Above 1 with ``temperature > 0`` gives sampled
            accuracy; an item's score is then the mean over its samples.
        temperature: 0.0 (default) is greedy: deterministic, what the gate compares. 1.0
            samples the raw distribution (what training collects).
        seed: Base sampler seed (sampled runs are reproducible with it).
        max_tool_calls, max_new_tokens, max_total_tokens: The agent's limits per run.
        concurrency: Runs in flight at once (the backend batches them; more uses more memory).
    """

    samples: int = 1
    temperature: float = 0.0
    seed: int = 0
    max_tool_calls: int = 6
    max_new_tokens: int = 64
    max_total_tokens: int = 1024
    concurrency: int = 32

    def __post_init__(self) -> None:
        if self.samples < 1 or self.concurrency < 1:
            raise ConfigError("EvalConfig: samples and concurrency must be >= 1")
        if self.temperature < 0:
            raise ConfigError(f"EvalConfig.temperature must be >= 0, got {self.temperature}")

    def agent_config(self) -> AgentConfig:
        return AgentConfig(
            max_tool_calls=self.max_tool_calls,
            max_new_tokens=self.max_new_tokens,
            max_total_tokens=self.max_total_tokens,
            temperature=self.temperature,
            seed=self.seed,
        )


@dataclass(frozen=True)
class ItemResult:
    """One run of one held-out item.

    Attributes:
        task_id, suite, needs_tool: The item (``needs_tool``: whether a tool is needed to answer
            it reliably; items that need none are where the sparse reward can cut calls).
        sample: Which of the item's samples this run is (0 for greedy evaluation).
        score: The verifier's score in [0, 1].
        answer: The final answer (None when the run ended without one).
        status: How the run ended (``ok``, ``max_tool_calls``, ``max_tokens``, ``error``).
        calls: Every executed tool call, in order.
        policy_version: The policy version that sampled the run (None if unregistered).
        entropy_kind: ``exact`` (in-process full-vocabulary entropy) or the estimator an HTTP
            backend used (``topk``, ``surprisal``); None when the run sampled nothing.
    """

    task_id: str
    suite: str
    needs_tool: bool
    sample: int
    score: float
    answer: str | None
    status: str
    calls: tuple[CallOutcome, ...]
    policy_version: int | None = None
    entropy_kind: str | None = None

    @property
    def correct(self) -> bool:
        return self.score >= CORRECT_AT

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["calls"] = [c.to_json() for c in self.calls]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemResult:
        calls = tuple(CallOutcome(**c) for c in data["calls"])
        return cls(**{**data, "calls": calls})


def item_result(task: Task, result: AgentResult, sample: int) -> ItemResult:
    """The :class:`ItemResult` of one finished agent run on ``task``."""
    kinds = [t.entropy_kind for t in result.trajectory.turns if t.role == "assistant"]
    return ItemResult(
        task_id=task.id,
        suite=task.suite,
        needs_tool=task.needs_tool,
        sample=sample,
        score=task.score(result.answer),
        answer=result.answer,
        status=result.status,
        calls=call_outcomes(result.tool_calls, result.answer, task.question),
        policy_version=result.trajectory.policy_version,
        entropy_kind=next((k for k in kinds if k is not None), None),
    )


async def aevaluate_items(
    agent: TepoAgent, tasks: Sequence[Task], cfg: EvalConfig, *, progress: bool = True
) -> list[ItemResult]:
    """Run ``agent`` ``cfg.samples`` times on every task, concurrently; results in task order."""
    if not tasks:
        raise ConfigError("an evaluation needs at least one task")
    gate = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(
        total=len(tasks) * cfg.samples,
        desc="eval",
        unit="run",
        disable=not progress,
        file=sys.stderr,
        leave=False,
    )

    async def one(task: Task, sample: int) -> ItemResult:
        async with gate:
            result = await agent.arun(task.question, task_id=task.id, sample=sample)
        bar.update(1)
        return item_result(task, result, sample)

    try:
        runs = [one(t, s) for t in tasks for s in range(cfg.samples)]
        return list(await asyncio.gather(*runs))
    finally:
        bar.close()


def evaluate_items(
    backend: Backend,
    chat_format: ChatFormat,
    tasks: Sequence[Task],
    tools: Sequence[BaseTool],
    cfg: EvalConfig | None = None,
    *,
    progress: bool = True,
) -> list[ItemResult]:
    """Synchronous evaluation of ``tasks`` with ``tools`` on ``backend`` (nothing is stored)."""
    cfg = cfg or EvalConfig()
    agent = TepoAgent(backend, chat_format, tools, cfg.agent_config())
    results: list[ItemResult] = run_sync(aevaluate_items(agent, tasks, cfg, progress=progress))
    return results


__all__ = [
    "CORRECT_AT",
    "EvalConfig",
    "ItemResult",
    "aevaluate_items",
    "evaluate_items",
    "item_result",
]
