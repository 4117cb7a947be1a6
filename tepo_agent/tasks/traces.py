"""Synthetic tool-use traces: the demonstrations the default model is bootstrapped on.

Each trace is an OpenAI-style message list (user, assistant with tool calls, tool results,
final assistant answer) for one task, produced by a scripted solver that calls the REAL tools
(the calculator, the FTS5 search over the task's knowledge base), so the model learns the exact
format of what tools return. Easy math items are answered without a tool, as a good agent would.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping
from typing import Any

from tepo_agent.tasks.base import Task
from tepo_agent.tasks.knowledge import KnowledgeBase

Message = dict[str, Any]
ToolFn = Callable[[dict[str, Any]], str]

_FINAL_TEMPLATES = ("The answer is {answer}.",)


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
        self.messages.append({"role": "assistant", "content": text})
        return self.messages


def _math_trace(task: Task, tools: Mapping[str, ToolFn]) -> list[Message]:
    trace = _Trace(task.question, tools)
    if task.needs_tool:
        result = trace.call("calculator", {"expression": task.metadata["expression"]})
        answer = result.strip()
    else:
        answer = task.answer
    return trace.answer(_FINAL_TEMPLATES[0].format(answer=answer))


def _search_chain(kb: KnowledgeBase, task: Task) -> list[str]:
    """The queries a careful searcher issues for a knowledge or deep-search item, in order."""
    if task.suite == "knowledge":
        person = kb.people[task.metadata["person"]]
        if task.metadata["kind"] == "birth_country":
            return [person.name, person.birth_city]
        return [person.name]
    company = kb.companies[task.metadata["company"]]
    founder = kb.people[company.founder]
    chain = [company.name, founder.name, founder.birth_city]
    if task.metadata["hops"] == 4:
        chain.append(kb.cities[founder.birth_city].country)
    return chain


def _search_trace(kb: KnowledgeBase, task: Task, tools: Mapping[str, ToolFn]) -> list[Message]:
    trace = _Trace(task.question, tools)
    for query in _search_chain(kb, task):
        result = trace.call("search", {"query": query})
        if not re.search(re.escape(query), result):
            raise ValueError(f"search for {query!r} did not return its document: {result!r}")
    return trace.answer(_FINAL_TEMPLATES[0].format(answer=task.answer))


def solve_with_tools(
    task: Task, tools: Mapping[str, ToolFn], kb: KnowledgeBase | None = None
) -> list[Message]:
    """A demonstration for ``task``: the messages of a correct, tool-efficient solution.

    ``tools`` maps tool names ("calculator", "search") to callables taking the arguments dict
    and returning the tool's text result (e.g. ``lambda args: tool.invoke(args)``).
    """
    if task.suite == "math":
        return _math_trace(task, tools)
    if kb is None:
        raise ValueError(f"task {task.id} needs the knowledge base it was generated from")
    return _search_trace(kb, task, tools)


def shuffled(traces: list[list[Message]], seed: int) -> list[list[Message]]:
    out = list(traces)
    random.Random(f"traces:{seed}").shuffle(out)
    return out


def trace_to_json(messages: list[Message]) -> str:
    return json.dumps(messages, ensure_ascii=False)
