"""The publishing gate: evaluate a policy on held-out tasks, and the accept/reject rule.

A candidate is run by the real agent (greedy, the real tools) on ``GateConfig.tasks`` seeded
items of ``tepo_agent.tasks`` generated with the held-out seed (``tasks.world.EVAL_SEED``, never
used for demonstrations), and compared with the live policy evaluated the same way:

- **accuracy**: mean verifier score of the final answers;
- **format error rate**: malformed or unknown-tool calls divided by all calls the model tried.

:func:`decide` rejects a candidate whose accuracy is more than ``margin`` below the live
policy's, or whose format error rate is more than ``format_margin`` above it. The rule is a pure
function, tested on hand-made tables.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from langchain_core.tools import BaseTool

from tepo_agent.agent.graph import AgentConfig, TepoAgent
from tepo_agent.backends.base import Backend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.tasks import (
    KnowledgeBase,
    SuiteName,
    Task,
    deep_search_suite,
    knowledge_suite,
    math_suite,
)
from tepo_agent.tasks.world import EVAL_SEED, world_tools
from tepo_agent.tools.calculator import make_calculator_tool
from tepo_agent.trajectory import FORMAT_ERROR_KINDS

_SUITES: tuple[SuiteName, ...] = ("math", "knowledge", "deep_search")


@dataclass(frozen=True)
class GateConfig:
    """How a candidate policy is evaluated before it goes live.

    Attributes:
        tasks: Held-out tasks per suite (default 16). More tasks give a less noisy accuracy at
            the cost of publish latency (every publish evaluates the candidate).
        suites: Which suites to draw from. ``knowledge``/``deep_search`` need a world directory
            (``MODEL/world`` of a bootstrapped model) for the search tool.
        seed: Seed of the held-out items (default ``EVAL_SEED``, disjoint from demonstrations).
        margin: Largest accuracy drop (absolute, in [0, 1]) below the live policy that still
            passes (default 0.05). 1.0 accepts any accuracy.
        format_margin: Largest rise of the format error rate that still passes (default 0.0:
            no rise allowed). 1.0 accepts any.
        max_tool_calls, max_new_tokens, max_total_tokens: Agent limits during evaluation.
        enabled: False skips evaluation and accepts every candidate (for experiments only).
    """

    tasks: int = 16
    suites: tuple[SuiteName, ...] = ("math",)
    seed: int = EVAL_SEED
    margin: float = 0.05
    format_margin: float = 0.0
    max_tool_calls: int = 4
    max_new_tokens: int = 96
    max_total_tokens: int = 2048
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.tasks < 1:
            raise ConfigError(f"GateConfig.tasks must be >= 1, got {self.tasks}")
        if not self.suites or any(s not in _SUITES for s in self.suites):
            raise ConfigError(f"GateConfig.suites must be a non-empty subset of {list(_SUITES)}")
        for name in ("margin", "format_margin"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"GateConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_tool_calls < 0 or self.max_new_tokens < 1 or self.max_total_tokens < 2:
            raise ConfigError("GateConfig agent limits must be positive")

    @property
    def key(self) -> str:
        """A fingerprint of what is evaluated: equal keys mean comparable evaluations."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("margin", "format_margin")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class EvalResult:
    """A policy's held-out evaluation.

    Attributes:
        accuracy: Mean verifier score in [0, 1].
        format_error_rate: Malformed or unknown-tool calls / attempted calls (0 with no calls).
        tasks: Tasks evaluated.
        tool_calls: Calls attempted in all.
        key: The :attr:`GateConfig.key` it was made under.
    """

    accuracy: float
    format_error_rate: float
    tasks: int
    tool_calls: int
    key: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EvalResult | None:
        """The result stored in a registry row's metrics, or None if absent or malformed."""
        try:
            return cls(**data)
        except TypeError:
            return None


@dataclass(frozen=True)
class GateDecision:
    """Whether a candidate may go live, and why (the reason is stored on rejection)."""

    accept: bool
    reason: str


def decide(candidate: EvalResult, live: EvalResult | None, cfg: GateConfig) -> GateDecision:
    """The accept/reject rule of the module docstring (no live evaluation: accept)."""
    if live is None:
        return GateDecision(True, "no live policy to compare with")
    drop = live.accuracy - candidate.accuracy
    if drop > cfg.margin + 1e-12:
        return GateDecision(
            False,
            f"accuracy {candidate.accuracy:.3f} is {drop:.3f} below the live policy's "
            f"{live.accuracy:.3f} (allowed: {cfg.margin:.3f})",
        )
    rise = candidate.format_error_rate - live.format_error_rate
    if rise > cfg.format_margin + 1e-12:
        return GateDecision(
            False,
            f"tool-call format error rate rose from {live.format_error_rate:.3f} to "
            f"{candidate.format_error_rate:.3f} (allowed rise: {cfg.format_margin:.3f})",
        )
    return GateDecision(
        True,
        f"accuracy {candidate.accuracy:.3f} vs live {live.accuracy:.3f}, format errors "
        f"{candidate.format_error_rate:.3f} vs {live.format_error_rate:.3f}",
    )


def _kb_seed(world_dir: Path) -> int:
    info = world_dir.parent / "bootstrap.json"
    if info.is_file():
        return int(json.loads(info.read_text())["config"].get("kb_seed", 0))
    return 0


def held_out_tasks(
    cfg: GateConfig, world_dir: str | os.PathLike[str] | None
) -> tuple[list[Task], list[BaseTool]]:
    """The held-out tasks and the tools to solve them with.

    With a world directory (``MODEL/world``), the tools are the default world's calculator and
    search (``tasks.world.world_tools``); without one only math is possible, with the calculator.
    """
    world = Path(world_dir) if world_dir is not None else None
    if world is not None and not (world / "search.db").is_file():
        world = None
    if world is None and any(s != "math" for s in cfg.suites):
        raise ConfigError(
            f"suites {list(cfg.suites)} need a search index: evaluate a bootstrapped model "
            "(its MODEL/world directory) or use suites=('math',)"
        )
    tasks: list[Task] = []
    kb = KnowledgeBase(seed=_kb_seed(world)) if world is not None else None
    for suite in cfg.suites:
        if suite == "math":
            tasks += math_suite(cfg.tasks, seed=cfg.seed)
        elif suite == "knowledge":
            assert kb is not None
            tasks += knowledge_suite(kb, cfg.tasks, seed=cfg.seed)
        else:
            assert kb is not None
            tasks += deep_search_suite(kb, cfg.tasks, seed=cfg.seed)
    tools = world_tools(world) if world is not None else [make_calculator_tool()]
    return tasks, tools


async def _evaluate(agent: TepoAgent, tasks: list[Task]) -> list[tuple[float, int, int]]:
    async def one(task: Task) -> tuple[float, int, int]:
        result = await agent.arun(task.question, task_id=task.id)
        calls = result.tool_calls
        bad = sum(1 for c in calls if c["error_kind"] in FORMAT_ERROR_KINDS)
        return task.score(result.answer), len(calls), bad

    return list(await asyncio.gather(*(one(t) for t in tasks)))


def evaluate_policy(
    backend: Backend,
    chat_format: ChatFormat,
    cfg: GateConfig,
    *,
    world_dir: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Run the agent greedily with ``backend`` on the held-out tasks; nothing is stored."""
    tasks, tools = held_out_tasks(cfg, world_dir)
    agent_cfg = AgentConfig(
        max_tool_calls=cfg.max_tool_calls,
        max_new_tokens=cfg.max_new_tokens,
        max_total_tokens=cfg.max_total_tokens,
        temperature=0.0,
    )
    agent = TepoAgent(backend, chat_format, tools, agent_cfg)
    from tepo_agent.agent.sync import run_sync

    rows: list[tuple[float, int, int]] = run_sync(_evaluate(agent, tasks))
    calls = sum(r[1] for r in rows)
    bad = sum(r[2] for r in rows)
    return EvalResult(
        accuracy=sum(r[0] for r in rows) / len(rows),
        format_error_rate=bad / calls if calls else 0.0,
        tasks=len(rows),
        tool_calls=calls,
        key=cfg.key,
    )


__all__ = [
    "EvalResult",
    "GateConfig",
    "GateDecision",
    "decide",
    "evaluate_policy",
    "held_out_tasks",
]
