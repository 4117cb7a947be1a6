"""Demonstrations tokenize token-exactly and SFT teaches a tiny model to follow them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool

from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.model.io import load_causal_lm
from tepo_agent.tasks import KnowledgeBase, deep_search_suite, math_suite
from tepo_agent.tasks.traces import solve_with_tools
from tepo_agent.tasks.world import build_world, world_tools
from tepo_agent.trainer.bootstrap import BootstrapConfig, bootstrap_model
from tepo_agent.trainer.sft import (
    SFTConfig,
    TokenizedTrace,
    first_turn,
    loss_weights,
    sft,
    tokenize_trace,
)

TINY = DefaultModelConfig(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    model_dir = init_model(root / "model", seed=0, config=TINY)
    kb = build_world(0, root / "world")
    tools = world_tools(root / "world")
    by_name = {t.name: (lambda args, t=t: str(t.invoke(args))) for t in tools}
    return {
        "fmt": ChatFormat.from_pretrained(model_dir),
        "model_dir": model_dir,
        "kb": kb,
        "schemas": [convert_to_openai_tool(t) for t in tools],
        "by_name": by_name,
    }


def test_trace_tokens_equal_the_full_rendering(world):
    fmt, kb = world["fmt"], world["kb"]
    for task in math_suite(4, seed=1) + deep_search_suite(kb, 2, seed=1):
        messages = solve_with_tools(task, world["by_name"], kb)
        trace = tokenize_trace(fmt, messages, world["schemas"])
        full = fmt.render(messages, world["schemas"], add_generation_prompt=False)
        # The full rendering closes the last turn with "<|im_end|>\n"; the trace stops at the
        # end-of-turn token the model samples.
        assert trace.input_ids + fmt.encode("\n") == full
        assert len(trace.loss_mask) == len(trace.input_ids)


def test_loss_mask_covers_exactly_the_assistant_turns(world):
    fmt, kb = world["fmt"], world["kb"]
    task = deep_search_suite(kb, 1, seed=2)[0]
    messages = solve_with_tools(task, world["by_name"], kb)
    trace = tokenize_trace(fmt, messages, world["schemas"])
    trained = fmt.decode([i for i, m in zip(trace.input_ids, trace.loss_mask, strict=True) if m])
    assert "<tool_call>" in trained and task.answer in trained
    assert "<tool_response>" not in trained and task.question not in trained
    assert trained.count("<|im_end|>") == sum(m["role"] == "assistant" for m in messages)


def test_sft_lowers_the_loss_on_demonstrations(world):
    fmt = world["fmt"]
    traces = [
        tokenize_trace(fmt, solve_with_tools(t, world["by_name"]), world["schemas"])
        for t in math_suite(4, seed=3)
    ]
    model = load_causal_lm(world["model_dir"])
    losses = sft(model, traces, SFTConfig(steps=30, batch_size=4, lr=1e-2, warmup_steps=2))
    assert losses[-1] < 0.5 * losses[0]
    assert not model.training


def test_first_turn_keeps_the_prompt_and_the_first_assistant_turn_only(world):
    fmt, kb = world["fmt"], world["kb"]
    task = deep_search_suite(kb, 1, seed=2)[0]
    messages = solve_with_tools(task, world["by_name"], kb)
    trace = tokenize_trace(fmt, messages, world["schemas"])
    cut = first_turn(trace)
    first_call = fmt.render(messages[:2], world["schemas"], add_generation_prompt=False)
    assert cut.input_ids + fmt.encode("\n") == first_call  # up to the first turn's end of turn
    assert cut.input_ids == trace.input_ids[: len(cut.input_ids)]
    assert cut.loss_mask[-1] == 1 and len(cut.loss_mask) < len(trace.loss_mask)
    assert first_turn(TokenizedTrace([5, 6, 7, 8], [0, 1, 1, 0])) == TokenizedTrace(
        [5, 6, 7], [0, 1, 1]
    )


def test_first_turn_steps_train_on_first_turns_then_on_whole_demonstrations(world):
    fmt = world["fmt"]
    traces = [
        tokenize_trace(fmt, solve_with_tools(t, world["by_name"], world["kb"]), world["schemas"])
        for t in deep_search_suite(world["kb"], 4, seed=3)
    ]
    seen: list[int] = []
    model = load_causal_lm(world["model_dir"])
    real_forward = model.forward

    def forward(*args, **kwargs):
        seen.append(kwargs["input_ids"].shape[1])
        return real_forward(*args, **kwargs)

    model.forward = forward
    cfg = SFTConfig(steps=4, batch_size=4, first_turn_steps=2, length_buckets=1)
    sft(model, traces, cfg)
    short = max(len(first_turn(t).input_ids) for t in traces)
    assert seen == [short, short, *[max(len(t.input_ids) for t in traces)] * 2]


def test_bootstrap_writes_a_loadable_model_with_its_world_and_record(tmp_path):
    cfg = BootstrapConfig(
        train_worlds=1,
        math_items=3,
        knowledge_items=2,
        deep_search_items=1,
        validation_items=1,
        select_from=1,
        select_every=1,
        held_out_items=2,
        held_out_samples=1,
        check_items=1,
        model=TINY,
        sft=SFTConfig(steps=2, batch_size=2),
    )
    out = bootstrap_model(tmp_path / "boot", cfg, command="test")
    info = json.loads((out / "bootstrap.json").read_text())
    assert info["data"]["demonstrations"] == 6
    assert info["command"] == "test"
    assert [c["step"] for c in info["checkpoints"]] == [1, 2]
    assert info["chosen_step"] in (1, 2)
    assert set(info["held_out"]["greedy"]) == {"math", "knowledge", "deep_search"}
    assert info["held_out"]["greedy"]["math"]["items"] == 2
    assert info["held_out"]["sampled"]["math"]["runs"] == 2
    assert len(info["prompt_format_sha256"]) == 64
    assert Path(out / "world" / "search.db").is_file()
    ChatFormat.from_pretrained(out)
    load_causal_lm(out)
    assert KnowledgeBase(seed=0).people  # the world is reproducible from its seed


def test_loss_weights_weigh_the_turns_after_a_tool_result():
    # prompt, first call, tool result, second call, tool result, answer
    trace = TokenizedTrace(list(range(11)), [0, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1])
    assert loss_weights(trace, 3.0) == [0, 0, 1, 1, 0, 3, 3, 0, 0, 3, 3]
    assert loss_weights(trace, 1.0) == [float(m) for m in trace.loss_mask]


def _tiny_recipe(**kw):
    return BootstrapConfig(
        train_worlds=1,
        math_items=3,
        knowledge_items=2,
        deep_search_items=1,
        validation_items=1,
        select_from=1,
        select_every=1,
        held_out_items=1,
        held_out_samples=1,
        check_items=1,
        model=TINY,
        sft=SFTConfig(steps=1, batch_size=2),
        **kw,
    )


def test_a_continued_bootstrap_starts_from_its_source_and_chains_its_record(tmp_path):
    first = bootstrap_model(tmp_path / "first", _tiny_recipe(), command="first")
    before = load_causal_lm(first).state_dict()
    # another seed: without the source's weights it would start from other random ones
    cont = _tiny_recipe(init_from=str(first), seed=1)
    second = bootstrap_model(tmp_path / "second", cont, command="second")
    info = json.loads((second / "bootstrap.json").read_text())
    lineage = info["init_from"]
    assert lineage["path"] == str(first)
    assert lineage["bootstrap"]["command"] == "first"
    assert len(lineage["model_sha256"]) == 64
    assert info["wall_seconds"]["lineage_total"] == pytest.approx(
        info["wall_seconds"]["total"] + lineage["bootstrap"]["wall_seconds"]["total"], abs=0.2
    )
    # one step from the first model's weights, not from seed 1's random ones: close to them
    after = load_causal_lm(second).state_dict()
    fresh = load_causal_lm(init_model(tmp_path / "fresh", seed=1, config=TINY)).state_dict()
    name = "model.layers.0.mlp.up_proj.weight"
    assert (after[name] - before[name]).abs().max() < (fresh[name] - before[name]).abs().max()


def test_a_continued_bootstrap_refuses_a_directory_without_a_record(tmp_path):
    source = init_model(tmp_path / "random", seed=0, config=TINY)
    with pytest.raises(ConfigError, match=r"no bootstrap\.json"):
        bootstrap_model(tmp_path / "out", _tiny_recipe(init_from=str(source)))
