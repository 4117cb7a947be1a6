"""Task suites are deterministic, answerable from their corpus, and scored by their verifiers."""

from __future__ import annotations

import json

import pytest

from tepo_agent.tasks import (
    KnowledgeBase,
    deep_search_suite,
    knowledge_suite,
    math_suite,
    normalize_answer,
    verify,
)
from tepo_agent.tasks.verifiers import f1_score, last_number


@pytest.mark.parametrize(
    ("verifier", "prediction", "reference", "expected"),
    [
        ("exact", "Paris", "paris", 1.0),
        ("exact", "The answer is Paris.", "Paris", 1.0),
        ("exact", "It is in the city of Paris", "Paris", 1.0),
        ("exact", "Parisian", "Paris", 0.0),
        ("exact", "London", "Paris", 0.0),
        ("numeric", "The answer is 1,776.", "1776", 1.0),
        ("numeric", "3.0", "3", 1.0),
        ("numeric", "about 41", "42", 0.0),
        ("numeric", "no number here", "42", 0.0),
        # f1: pred tokens {new, york, city}, ref {new, york}: P = 2/3, R = 1, F1 = 0.8
        ("f1", "New York City", "New York", 0.8),
        ("f1", "Boston", "New York", 0.0),
    ],
)
def test_verifier_table(verifier, prediction, reference, expected):
    assert verify(verifier, prediction, reference) == pytest.approx(expected)


def test_missing_answer_scores_zero():
    assert verify("exact", None, "x") == 0.0


def test_normalize_answer_drops_articles_and_punctuation():
    assert normalize_answer("  The Answer, is: A cat! ") == "answer is cat"


def test_last_number_reads_thousands_and_signs():
    assert last_number("from 3 to -1,234.5") == -1234.5
    assert f1_score("", "") == 1.0


def test_math_suite_is_deterministic_and_answers_are_correct():
    a, b = math_suite(40, seed=3), math_suite(40, seed=3)
    assert a == b
    assert a != math_suite(40, seed=4)
    for task in a:
        expr = task.metadata["expression"]
        # The reference is the true value of the expression the question shows.
        assert expr in task.question
        value = eval(expr, {"__builtins__": {}})
        assert task.score(str(value)) == 1.0
    assert any(not t.needs_tool for t in a) and any(t.needs_tool for t in a)


def test_knowledge_answers_follow_from_the_corpus():
    kb = KnowledgeBase(seed=1)
    texts = " ".join(doc["text"] for doc in kb.corpus())
    for task in knowledge_suite(kb, 30, seed=2) + deep_search_suite(kb, 30, seed=2):
        assert task.answer in texts
        assert task.score(f"The answer is {task.answer}.") == 1.0
    hops = {t.metadata["hops"] for t in deep_search_suite(kb, 30, seed=2)}
    assert hops == {3, 4}


def test_knowledge_base_is_seeded(tmp_path):
    path = KnowledgeBase(seed=5).write_corpus(tmp_path / "corpus.jsonl")
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert docs == list(KnowledgeBase(seed=5).corpus())
    assert {d["id"] for d in docs} != {d["id"] for d in KnowledgeBase(seed=6).corpus()}
    assert len({d["id"] for d in docs}) == len(docs)
