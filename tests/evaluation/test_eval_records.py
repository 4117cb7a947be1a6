"""The per-item evaluator on a real agent run, and evaluations stored in a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
from _scripted_backend import ScriptedBackend, calc_call, chat_format, tiny_model_dir

from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import StoreError
from tepo_agent.evaluation import (
    EvalConfig,
    EvalMeta,
    evaluate_items,
    list_evaluations,
    load_evaluation,
    save_evaluation,
    summarize,
)
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks import Task
from tepo_agent.tools.calculator import make_calculator_tool

__all__ = ["chat_format", "tiny_model_dir"]  # fixtures

TASKS = [
    Task("m-0", "math", "What is 17 * 23?", "391", "numeric", needs_tool=True),
    Task("m-1", "math", "What is 2 + 3?", "5", "numeric", needs_tool=False),
]


def _evaluate(model_dir: Path, fmt: ChatFormat) -> list:
    # one run at a time, so the scripted turns go to the items in order
    script = [calc_call("17 * 23"), "The answer is 391.", "The answer is 6."]
    backend = ScriptedBackend(model_dir, fmt, script, policy_version=7)
    cfg = EvalConfig(concurrency=1, max_new_tokens=64)
    return evaluate_items(backend, fmt, TASKS, [make_calculator_tool()], cfg, progress=False)


def test_items_record_score_calls_and_entropy(
    tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    items = _evaluate(tiny_model_dir, chat_format)
    assert [(i.task_id, i.score, len(i.calls)) for i in items] == [("m-0", 1.0, 1), ("m-1", 0.0, 0)]
    call = items[0].calls[0]
    assert call.name == "calculator" and call.error is None and call.used
    assert call.delta_entropy is not None  # the turn after the call was sampled
    assert items[0].policy_version == 7 and items[0].entropy_kind == "exact"
    assert not items[1].needs_tool and not items[1].correct


def test_an_evaluation_round_trips_through_the_database(
    tmp_path: Path, tiny_model_dir: Path, chat_format: ChatFormat
) -> None:
    items = _evaluate(tiny_model_dir, chat_format)
    with TrajectoryStore(tmp_path / "t.db") as store:
        meta = EvalMeta(suite="math", seed=1000, n=2, policy_version=7, label="eval")
        eval_id = save_evaluation(store, items, meta)
        other = save_evaluation(store, items[:1], EvalMeta(suite="math", seed=1, n=1))
        loaded_meta, loaded = load_evaluation(store, eval_id)
        assert loaded_meta == meta and loaded == items
        # the figures of the stored evaluation, by hand: m-0 right with one used call, m-1
        # (needs no tool) wrong without a call
        fig = summarize(loaded)
        assert (fig.accuracy.estimate, fig.calls_per_run) == (0.5, 0.5)
        assert (fig.calls_per_run_tool_items, fig.calls_per_run_no_tool_items) == (1.0, 0.0)
        assert fig.pilot.reducing_good + fig.pilot.rising_good == 1  # the one used call
        assert store.count() == 0  # held-out runs never become training trajectories
        rows = list_evaluations(store, policy_version=7)
        assert [r["id"] for r in rows] == [eval_id] and other != eval_id
        assert rows[0]["summary"] == summarize(items).to_json()
        assert rows[0]["entropy_kind"] == "exact"
        assert len(list_evaluations(store)) == 2
        with pytest.raises(StoreError, match="no evaluation"):
            load_evaluation(store, 999)
