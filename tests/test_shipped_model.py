"""The default model shipped with the package: found without a build, matching its record.

``bootstrap.json`` beside the shipped weights records the held-out figures and the hash of the
prompt format the weights were trained on. These tests recompute both from the code and the
weights, so neither the record nor a later change to the prompts can drift from the weights.
"""

from __future__ import annotations

import json

import pytest

from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import build_tokenizer
from tepo_agent.model.io import load_causal_lm
from tepo_agent.paths import bootstrapped_model_dir, shipped_model_dir
from tepo_agent.tasks.world import world_tools
from tepo_agent.trainer.bootstrap import GREEDY, ensure_bootstrapped_model
from tepo_agent.trainer.bootstrap_record import (
    evaluate_model,
    headline,
    held_out_sets,
    prompt_format_hash,
)

SHIPPED = shipped_model_dir()
RECORD = json.loads((SHIPPED / "bootstrap.json").read_text())

TOLERANCE_ITEMS = 1
"""Greedy decoding is deterministic, but a batch of different composition can round a near-tie
the other way: the recomputed accuracy may differ from the record by at most one item per
suite."""


def test_the_default_model_is_the_shipped_one_without_a_build(tmp_path, monkeypatch):
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path))
    assert bootstrapped_model_dir() == SHIPPED
    assert ensure_bootstrapped_model() == SHIPPED  # found, not built
    assert not (tmp_path / "models").exists()
    weights = SHIPPED / "model.safetensors"
    assert weights.stat().st_size <= 10 * 2**20


def test_the_prompt_format_is_the_one_the_weights_were_trained_on(tmp_path):
    # The current code's tokenizer and chat template, the current world's tool schemas.
    build_tokenizer().save_pretrained(tmp_path)
    current = prompt_format_hash(
        ChatFormat.from_pretrained(tmp_path), world_tools(SHIPPED / "world")
    )
    assert current == RECORD["prompt_format_sha256"], (
        "the chat template, system prompt, tool schemas or tokenizer changed since the default "
        "model was bootstrapped: rebuild it (tepo-agent bootstrap --out tepo_agent/assets/"
        "default-model) so the weights match the prompts they are shown"
    )


def test_the_shipped_weights_reproduce_the_recorded_held_out_check(tmp_path):
    check = RECORD["check"]
    fmt = ChatFormat.from_pretrained(SHIPPED)
    model = load_causal_lm(SHIPPED, device="cpu", dtype="float32")
    sets = held_out_sets(check["items_per_suite"], check["seed"], tmp_path)
    figures = headline(evaluate_model(model, fmt, sets, GREEDY))
    tolerance = TOLERANCE_ITEMS / check["items_per_suite"] + 1e-9
    for suite, recorded in check["greedy"].items():
        assert figures[suite]["accuracy"] == pytest.approx(recorded["accuracy"], abs=tolerance)
