"""The embedded default model: a deterministic byte-level tokenizer, a seeded tiny Qwen2, built
once into the cache directory even when several processes ask at the same time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tepo_agent.cli import main
from tepo_agent.errors import ConfigError
from tepo_agent.model.default import (
    DEFAULT_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    TOOL_MARKUP_TOKENS,
    VOCAB_SIZE,
    DefaultModelConfig,
    build_tokenizer,
    default_home,
    ensure_default_model,
    init_model,
    parameter_count,
    synthetic_corpus,
)
from tepo_agent.model.io import load_causal_lm, load_tokenizer
from tepo_agent.tasks.world import tool_schemas


def test_tokenizer_has_512_ids_with_qwen_style_special_tokens():
    tokenizer = build_tokenizer()
    assert len(tokenizer) == VOCAB_SIZE == 512
    assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer.convert_tokens_to_ids([*SPECIAL_TOKENS, *TOOL_MARKUP_TOKENS])
    assert len(set(ids)) == 7 and all(0 <= i < 512 for i in ids)
    assert set(tokenizer.all_special_tokens) == set(SPECIAL_TOKENS)
    # Tool markup is atomic but not special: decoding with skip_special_tokens keeps it.
    markup = tokenizer.encode("<tool_call>{}</tool_call>", add_special_tokens=False)
    assert tokenizer.decode(markup, skip_special_tokens=True) == "<tool_call>{}</tool_call>"
    assert tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE


def test_tokenizer_training_is_deterministic():
    first, second = build_tokenizer(), build_tokenizer()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


def test_merges_learned_the_synthetic_corpus():
    tokenizer = build_tokenizer()
    text = '{"name": "calculator", "arguments": {"expression": "12 + 7"}}'
    assert len(tokenizer.encode(text, add_special_tokens=False)) < len(text.encode()) / 2


def test_the_corpus_holds_the_real_tools_schemas():
    # one definition: the tokenizer's corpus takes the schemas from the world's tools
    corpus = synthetic_corpus(n_dialogues=4)
    for schema in tool_schemas():
        assert json.dumps(schema) in corpus
    assert any(s["function"]["name"] == "calculator" for s in tool_schemas())


def test_init_model_writes_a_loadable_hugging_face_directory(default_model_dir):
    names = {p.name for p in default_model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    model = load_causal_lm(default_model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == parameter_count() and 1_000_000 <= n_params <= 5_000_000
    assert model.config.model_type == "qwen2" and model.config.vocab_size == 512
    # untied: a shared matrix collapses the digit embeddings (DefaultModelConfig)
    assert not model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight.data_ptr() != model.lm_head.weight.data_ptr()
    tokenizer = load_tokenizer(default_model_dir)
    generation = json.loads((default_model_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)])
    with torch.no_grad():
        logits = model(ids).logits  # (1, T, V)
    assert logits.shape == (1, ids.shape[1], 512) and torch.isfinite(logits).all()


def test_same_seed_gives_identical_weights_and_other_seeds_differ(tmp_path, default_model_dir):
    small = DefaultModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    a = load_file(init_model(tmp_path / "a", seed=0, config=small) / "model.safetensors")
    b = load_file(init_model(tmp_path / "b", seed=0, config=small) / "model.safetensors")
    c = load_file(init_model(tmp_path / "c", seed=1, config=small) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_init_model_leaves_the_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    init_model(tmp_path / "m", config=DefaultModelConfig(hidden_size=64, num_hidden_layers=1))
    assert torch.equal(torch.rand(3), expected)


def test_init_model_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not an empty directory"):
        init_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 129}, "multiple of num_attention_heads"),
        ({"num_key_value_heads": 3}, "multiple of num_key_value_heads"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be >= 1"),
        ({"rms_norm_eps": 0.0}, "must be > 0"),
    ],
)
def test_config_rejects_impossible_shapes(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DefaultModelConfig(**kwargs)


def test_parameter_count_matches_the_built_model_for_other_shapes():
    from transformers import Qwen2ForCausalLM

    config = DefaultModelConfig(
        hidden_size=96, intermediate_size=200, num_hidden_layers=2, tie_word_embeddings=False
    )
    model = Qwen2ForCausalLM(config.to_qwen2_config(build_tokenizer()))
    assert sum(p.numel() for p in model.parameters()) == parameter_count(config)


def test_default_home_is_read_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path / "home"))
    assert default_home() == tmp_path / "home"
    monkeypatch.delenv("TEPO_AGENT_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_home() == tmp_path / ".cache" / "tepo-agent"


def test_ensure_default_model_builds_once_then_reuses(monkeypatch, tmp_path):
    monkeypatch.setenv("TEPO_AGENT_HOME", str(tmp_path))
    path = ensure_default_model()
    assert path == tmp_path / "models" / "default-init"
    weights = path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert ensure_default_model() == path
    assert weights.stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == ["default-init"]  # no temp dirs left


@pytest.mark.slow
def test_concurrent_first_calls_agree_on_one_complete_model(tmp_path):
    script = (
        "from tepo_agent.model.default import ensure_default_model; print(ensure_default_model())"
    )
    env = {"TEPO_AGENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=240)[0].strip() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    target = tmp_path / "models" / "default-init"
    assert set(outputs) == {str(target)}
    assert [p.name for p in target.parent.iterdir()] == ["default-init"]
    load_causal_lm(target)  # complete: config, weights and tokenizer all there
    load_tokenizer(target)


def test_cli_init_model_reports_files_and_parameter_count(tmp_path, capsys):
    assert main(["init-model", "--out", str(tmp_path / "m"), "--seed", "5"]) == 0
    out = capsys.readouterr().out
    assert f"{parameter_count():,} parameters, seed 5" in out
    assert str(tmp_path / "m" / "model.safetensors") in out
    assert main(["init-model", "--out", str(tmp_path / "m")]) == 1
    assert "not an empty directory" in capsys.readouterr().err


def test_default_model_directory_is_self_contained(default_model_dir: Path):
    config = json.loads((default_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"]
    assert (default_model_dir / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
