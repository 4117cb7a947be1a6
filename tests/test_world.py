"""The task world: held-out worlds are unseen, the no-tool share is fixed, the habits happen."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from tepo_agent.errors import ConfigError
from tepo_agent.tasks import KnowledgeBase, deep_search_suite, knowledge_suite, math_suite
from tepo_agent.tasks.base import NO_TOOL_SHARE
from tepo_agent.tasks.knowledge import common_knowledge
from tepo_agent.tasks.traces import EFFICIENT, Habits, search_chain, solve_with_tools
from tepo_agent.tasks.world import EVAL_SEED, build_world, held_out, world_tools
from tepo_agent.trainer.bootstrap import BootstrapConfig, demonstration_messages

DOCS = Path(__file__).resolve().parents[1] / "docs/world.md"


def test_no_held_out_question_or_answer_occurs_in_the_demonstrations(tmp_path):
    questions: set[str] = set()
    words: set[str] = set()
    # 32 math items per world: the shipped model's continuation runs (--math-items 32); the
    # from-scratch recipe's 16 are a prefix of them
    recipe = replace(BootstrapConfig(), math_items=32)
    for _, messages, _ in demonstration_messages(recipe, tmp_path / "train"):
        questions.add(messages[0]["content"])
        for m in messages:
            words.update(re.findall(r"\w+", f"{m.get('content')} {m.get('tool_calls') or ''}"))
    assert len(questions) > 1000 and {"born", "founded", "calculator"} <= words
    held = [
        t
        for suite in ("math", "knowledge", "deep_search")
        for t in held_out(suite, 100, EVAL_SEED, workdir=tmp_path / "eval")[0]
    ]
    for task in held:
        if task.needs_tool:
            assert task.question not in questions, task
        if task.needs_tool and task.suite != "math":  # a number may well occur elsewhere
            assert not set(re.findall(r"\w+", task.answer)) & words, task
    # No entity of the held-out world occurs anywhere in the demonstrations.
    own = KnowledgeBase(seed=EVAL_SEED).own
    assert not {w for name in own.names() for w in name.split()} & words


def test_the_no_tool_share_is_the_documented_one(tmp_path):
    assert NO_TOOL_SHARE == 0.25
    assert "Exactly one item in four needs no tool" in DOCS.read_text()
    kb = KnowledgeBase(seed=3)
    for n in (1, 4, 7, 40, 101):
        for tasks in (
            math_suite(n, seed=2),
            knowledge_suite(kb, n, seed=2),
            deep_search_suite(kb, n, seed=2),
        ):
            assert sum(not t.needs_tool for t in tasks) == n // 4
    tasks, _ = held_out("knowledge", 20, EVAL_SEED, workdir=tmp_path)
    assert [t.needs_tool for t in tasks[:4]] == [True, True, True, False]


def test_items_for_n_are_a_prefix_of_the_items_for_more():
    kb = KnowledgeBase(seed=1)
    assert deep_search_suite(kb, 9, seed=5) == deep_search_suite(kb, 30, seed=5)[:9]
    assert math_suite(9, seed=5) == math_suite(30, seed=5)[:9]


def test_no_tool_items_ask_about_common_knowledge_only():
    common = common_knowledge().names()
    kb = KnowledgeBase(seed=EVAL_SEED + 7)
    for task in knowledge_suite(kb, 40, seed=1) + deep_search_suite(kb, 40, seed=1):
        assert (task.metadata["entity"] in common) == (not task.needs_tool)
    for task in math_suite(40, seed=1):
        numbers = re.findall(r"\d+", task.metadata["expression"])
        assert all(len(x) == 1 for x in numbers) == (not task.needs_tool)


def test_held_out_refuses_training_seeds(tmp_path):
    with pytest.raises(ConfigError, match="training world"):
        held_out("math", 4, EVAL_SEED - 1, workdir=tmp_path)


def test_held_out_builds_its_world_once_and_answers_follow_from_it(tmp_path):
    tasks, tools = held_out("deep_search", 12, EVAL_SEED + 1, workdir=tmp_path)
    db = tmp_path / f"world-{EVAL_SEED + 1}" / "search.db"
    built = db.stat().st_mtime_ns
    held_out("knowledge", 12, EVAL_SEED + 1, workdir=tmp_path)
    assert db.stat().st_mtime_ns == built
    search = {t.name: t for t in tools}["search"]
    kb = KnowledgeBase(seed=EVAL_SEED + 1)
    for task in tasks:
        found = [str(search.invoke({"query": q})) for q in search_chain(kb, task)]
        assert task.answer in found[-1]


def test_efficient_solver_answers_everything_with_exactly_the_calls_needed(tmp_path):
    kb = build_world(4, tmp_path)
    tools = {t.name: (lambda args, t=t: str(t.invoke(args))) for t in world_tools(tmp_path)}
    for task in knowledge_suite(kb, 20, seed=4) + deep_search_suite(kb, 20, seed=4):
        messages = solve_with_tools(task, tools, kb, habits=EFFICIENT)
        calls = sum(bool(m.get("tool_calls")) for m in messages)
        assert task.score(messages[-1]["content"]) == 1.0
        assert calls == (len(search_chain(kb, task)) if task.needs_tool else 0)


def test_habits_put_unneeded_calls_repeats_and_guesses_into_the_demonstrations(tmp_path):
    kb = build_world(5, tmp_path)
    tools = {t.name: (lambda args, t=t: str(t.invoke(args))) for t in world_tools(tmp_path)}
    tasks = math_suite(200, seed=5) + knowledge_suite(kb, 200, seed=5)
    unneeded = repeated = wrong = 0
    for task in tasks:
        messages = solve_with_tools(task, tools, kb, habits=Habits())
        queries = [
            str(c["function"]["arguments"]) for m in messages for c in m.get("tool_calls") or ()
        ]
        unneeded += bool(queries) and not task.needs_tool
        repeated += len(queries) != len(set(queries))
        wrong += task.score(messages[-1]["content"]) < 1.0
        if not task.needs_tool:
            assert task.score(messages[-1]["content"]) == 1.0  # memory is right
    # 100 no-tool items at 30%, 150 search items at 20%, 300 tool items at 15% (binomial
    # bounds far outside 4 standard deviations would be a broken rate, not bad luck).
    assert 12 <= unneeded <= 50
    assert 10 <= repeated <= 55
    assert 20 <= wrong <= 75
