"""Collection: run the agent on tasks in GRPO groups and score every run by its verifier.

What an exploration loop feeds the trainer: each task is asked ``group`` times under one group
id (all samples of all tasks in flight together, so the backend batches them), every run is
stored as a trajectory, and its verifier score arrives as feedback (``source="verifier"``), which
queues it for the trainer::

    groups = collect(agent, store, tasks, group=8, app_tag="explore")
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

from tqdm import tqdm

from tepo_agent.agent.graph import AgentResult, TepoAgent, check_keywords
from tepo_agent.agent.sync import run_sync
from tepo_agent.errors import ConfigError
from tepo_agent.store import Store
from tepo_agent.tasks import Task


@dataclass(frozen=True)
class GroupOutcome:
    """One task's group: its runs and their verifier scores, in sample order."""

    task: Task
    results: tuple[AgentResult, ...]
    scores: tuple[float, ...]


class CollectOptions(TypedDict, total=False):
    """Keyword options of :func:`acollect` and :func:`collect`.

    Attributes:
        app_tag: The label every stored trajectory gets (default ``"collect"``).
        on_group: Called with each group's outcome as soon as its runs are scored.
        progress: Show a progress bar on stderr (default True).
    """

    app_tag: str
    on_group: Callable[[GroupOutcome], None] | None
    progress: bool


async def acollect(
    agent: TepoAgent,
    store: Store,
    tasks: Sequence[Task],
    group: int,
    **options: Unpack[CollectOptions],
) -> list[GroupOutcome]:
    """Collect one group per task (see the module docstring); results in task order."""
    check_keywords("acollect", options, CollectOptions)
    app_tag = options.get("app_tag", "collect")
    on_group = options.get("on_group")
    if agent.store is None:
        raise ConfigError("collection stores what it samples: give the agent a store")
    if group < 1:
        raise ConfigError(f"a group needs >= 1 samples, got {group}")
    bar = tqdm(
        total=len(tasks) * group, desc="collect", unit="run",
        disable=not options.get("progress", True),
        file=sys.stderr, leave=False,
    )  # fmt: skip

    async def one(task: Task) -> GroupOutcome:
        results = await agent.arun_group(task.question, group, task_id=task.id, app_tag=app_tag)
        scores = []
        for res in results:
            score = task.score(res.answer)
            assert res.trajectory_id is not None  # the agent has a store
            store.record_feedback(res.trajectory_id, score, source="verifier")
            scores.append(score)
        outcome = GroupOutcome(task, tuple(results), tuple(scores))
        bar.update(group)
        if on_group is not None:
            on_group(outcome)
        return outcome

    try:
        return list(await asyncio.gather(*(one(t) for t in tasks)))
    finally:
        bar.close()


def collect(
    agent: TepoAgent,
    store: Store,
    tasks: Sequence[Task],
    group: int,
    **options: Unpack[CollectOptions],
) -> list[GroupOutcome]:
    """Synchronous :func:`acollect`."""
    outcomes: list[GroupOutcome] = run_sync(acollect(agent, store, tasks, group, **options))
    return outcomes


__all__ = ["CollectOptions", "GroupOutcome", "acollect", "collect"]
