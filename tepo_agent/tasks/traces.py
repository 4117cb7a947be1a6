"""Synthetic tool-use traces: the demonstrations the default model is bootstrapped on.

Each trace is an OpenAI-style message list (user, assistant with tool calls, tool results,
final assistant answer) for one task, produced by a scripted solver that calls the REAL tools
(the calculator, the FTS5 search over the task's world), so the model learns the exact format of
what tools return.

The solver has real agents' habits (``Habits``, rates fixed and documented in docs/world.md), so
training has something to change:

- on items that need no tool it sometimes calls one anyway (an unneeded call the sparse reward
  can cut);
- on search items it sometimes issues a query twice (a repeated search, also a call to cut);
- on items that need a tool it sometimes guesses instead: it answers before (finishing) the
  calls, with a plausible but usually wrong answer (accuracy the dense reward can raise).

Every choice is drawn from a generator seeded with the task's id: the same task always gets the
same trace.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tepo_agent.errors import ConfigError
from tepo_agent.tasks.base import Task
from tepo_agent.tasks.knowledge import KnowledgeBase
from tepo_agent.tools.calculator import evaluate, format_number

Message = dict[str, Any]
ToolFn = Callable[[dict[str, Any]], str]

FINAL_TEMPLATE = "The answer is {answer}."


@dataclass(frozen=True)
class Habits:
    """How often the scripted solver departs from the efficient, correct solution.

    Attributes:
        unneeded_call: Probability of calling a tool on an item that needs none (math: the
            calculator on the expression; knowledge and deep search: one search for the entity)
            before answering from memory.
        repeat_search: Probability, on a search item that needs a tool, of issuing one of its
            queries twice in a row.
        guess: Probability, on an item that needs a tool, of answering without the calls it
            needs (math: an estimate from rounded operands; search: a random entity of the right
            kind from the same world, after zero or more of the chain's searches).
    """

    unneeded_call: float = 0.3
    repeat_search: float = 0.2
    guess: float = 0.15

    def __post_init__(self) -> None:
        for name in ("unneeded_call", "repeat_search", "guess"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"Habits.{name} must be in [0, 1], got {getattr(self, name)}")


EFFICIENT = Habits(unneeded_call=0.0, repeat_search=0.0, guess=0.0)
"""A solver with no habits: exactly the calls an item needs."""


class _Trace:
    def __init__(self, question: str, tools: Mapping[str, ToolFn]) -> None:
        self.messages: list[Message] = [{"role": "user", "content": question}]
        self._tools = tools
        self._n = 0

    def call(self, name: str, arguments: dict[str, Any]) -> str:
        self._n += 1
        call_id = f"call_{self._n}"
        self.messages.append(
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            }
        )
        result = self._tools[name](arguments)
        self.messages.append(
            {"role": "tool", "tool_call_id": call_id, "name": name, "content": result}
        )
        return result

    def answer(self, text: str) -> list[Message]:
        self.messages.append({"role": "assistant", "content": FINAL_TEMPLATE.format(answer=text)})
        return self.messages


def _estimate(expression: str) -> str:
    """A guess at an expression: every number rounded to one significant digit, then computed."""

    def rounded(match: re.Match[str]) -> str:
        value = int(match.group())
        scale = 10 ** (len(str(value)) - 1)
        return str(round(value / scale) * scale)

    return format_number(evaluate(re.sub(r"\d+", rounded, expression)))


def _math_trace(
    task: Task, tools: Mapping[str, ToolFn], habits: Habits, rng: random.Random
) -> list[Message]:
    trace = _Trace(task.question, tools)
    expression = task.metadata["expression"]
    if not task.needs_tool:
        if rng.random() < habits.unneeded_call:
            trace.call("calculator", {"expression": expression})
        return trace.answer(task.answer)
    if rng.random() < habits.guess:
        return trace.answer(_estimate(expression))
    return trace.answer(trace.call("calculator", {"expression": expression}).strip())


def search_chain(kb: KnowledgeBase, task: Task) -> list[str]:
    """The queries a careful searcher issues for a knowledge or deep-search item, in order."""
    kind = task.metadata["kind"]
    entity = task.metadata["entity"]
    if kind == "birth_city":
        return [entity]
    if kind == "birth_country":
        return [entity, kb.people[entity].birth_city]
    if kind in ("founder", "founded_in"):
        return [entity]
    founder = kb.people[kb.companies[entity].founder]
    chain = [entity, founder.name, founder.birth_city]
    if kind == "founder_capital":
        chain.append(kb.cities[founder.birth_city].country)
    return chain


def _guess(kb: KnowledgeBase, task: Task, rng: random.Random) -> str:
    """A plausible answer of the right kind from the task's world (usually wrong)."""
    kind = task.metadata["kind"]
    if kind in ("birth_country", "founder_country"):
        pool = kb.own.countries
    elif kind == "founder":
        pool = kb.own.people
    else:
        pool = kb.own.cities
    return rng.choice(sorted(pool))


def _search_trace(
    kb: KnowledgeBase,
    task: Task,
    tools: Mapping[str, ToolFn],
    habits: Habits,
    rng: random.Random,
) -> list[Message]:
    trace = _Trace(task.question, tools)
    chain = search_chain(kb, task)
    if not task.needs_tool:
        if rng.random() < habits.unneeded_call:
            trace.call("search", {"query": chain[0]})
        return trace.answer(task.answer)
    stop = len(chain)
    if rng.random() < habits.guess:
        stop = rng.randrange(len(chain))  # answer after this many of the chain's searches
    repeat = rng.randrange(len(chain)) if rng.random() < habits.repeat_search else -1
    for i, query in enumerate(chain[:stop]):
        needed = chain[i + 1] if i + 1 < len(chain) else task.answer
        for _ in range(2 if i == repeat else 1):
            result = trace.call("search", {"query": query})
            if needed not in result:
                raise ConfigError(f"search for {query!r} did not return {needed!r}: {result!r}")
    return trace.answer(task.answer if stop == len(chain) else _guess(kb, task, rng))


def solve_with_tools(
    task: Task,
    tools: Mapping[str, ToolFn],
    kb: KnowledgeBase | None = None,
    *,
    habits: Habits = EFFICIENT,
) -> list[Message]:
    """A demonstration for ``task``: its messages, with the solver's ``habits``.

    ``tools`` maps tool names ("calculator", "search") to callables taking the arguments dict
    and returning the tool's text result (e.g. ``lambda args: tool.invoke(args)``). With the
    default ``EFFICIENT`` habits the trace is a correct, tool-efficient solution.
    """
    rng = random.Random(f"habits:{task.id}")
    if task.suite == "math":
        return _math_trace(task, tools, habits, rng)
    if kb is None:
        raise ConfigError(f"task {task.id} needs the knowledge base it was generated from")
    return _search_trace(kb, task, tools, habits, rng)


def shuffled(traces: list[list[Message]], seed: int) -> list[list[Message]]:
    out = list(traces)
    random.Random(f"traces:{seed}").shuffle(out)
    return out


def trace_to_json(messages: list[Message]) -> str:
    return json.dumps(messages, ensure_ascii=False)
