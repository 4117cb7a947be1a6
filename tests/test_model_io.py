"""Any local Hugging Face causal-LM directory loads, offline, in eval mode with the asked dtype;
broken directories fail with a ModelLoadError that names the path and what is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from tepo_agent.errors import ConfigError, ModelLoadError
from tepo_agent.model.default import build_tokenizer
from tepo_agent.model.io import load_causal_lm, load_tokenizer, resolve_device


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, Qwen2ForCausalLM]:
    """A random tiny Qwen2 (untied embeddings, unlike the default) saved the ordinary way."""
    path = tmp_path_factory.mktemp("tiny-qwen2")
    torch.manual_seed(7)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config).eval()
    model.save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path, model


def _copy_without(src: Path, dst: Path, *names: str) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*names))
    return dst


def test_loads_the_saved_weights_exactly_in_eval_mode(saved):
    path, original = saved
    model = load_causal_lm(path)
    assert not model.training
    assert model.dtype == torch.float32  # auto on CPU
    ids = torch.tensor([[1, 2, 3, 400, 5]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, original(ids).logits)


def test_dtype_is_honoured(saved):
    path, _ = saved
    assert load_causal_lm(path, dtype="bfloat16").dtype == torch.bfloat16
    assert load_causal_lm(path, dtype="float32", device="auto").dtype == torch.float32


def test_tokenizer_loads_fast_with_its_chat_template(saved):
    tokenizer = load_tokenizer(saved[0])
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) == 512
    assert "<|im_start|>" in tokenizer.chat_template


def test_missing_directory_names_the_path(tmp_path):
    missing = tmp_path / "Qwen2.5-0.5B-Instruct"
    for load in (load_causal_lm, load_tokenizer):
        with pytest.raises(ModelLoadError, match=r"Qwen2\.5-0\.5B-Instruct does not exist"):
            load(missing)


def test_hub_ids_are_never_fetched():
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_causal_lm("Qwen/Qwen2.5-0.5B-Instruct-not-a-local-dir")


def test_file_instead_of_directory(tmp_path):
    (tmp_path / "model.bin").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match="is a file"):
        load_causal_lm(tmp_path / "model.bin")


def test_missing_config_is_named(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m", "config.json")
    with pytest.raises(ModelLoadError, match=r"no config\.json in .*m"):
        load_causal_lm(broken)


def test_missing_weights_are_named(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m", "*.safetensors")
    with pytest.raises(ModelLoadError, match="no weights in"):
        load_causal_lm(broken)


def test_missing_tokenizer_files_are_named(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m", "tokenizer.json")
    with pytest.raises(ModelLoadError, match="no tokenizer files in"):
        load_tokenizer(broken)


def test_corrupt_config_becomes_model_load_error(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m")
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load the model in"):
        load_causal_lm(broken)


def test_truncated_weights_become_model_load_error(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match="cannot load the model in"):
        load_causal_lm(broken)


def test_bad_dtype_and_device_are_config_errors(saved):
    with pytest.raises(ConfigError, match="dtype must be one of"):
        load_causal_lm(saved[0], dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown device"):
        load_causal_lm(saved[0], device="tpu-please")


def test_auto_device_picks_what_is_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_config_error(saved):
    with pytest.raises(ConfigError, match="no GPU is visible"):
        load_causal_lm(saved[0], device="cuda")


def test_corrupt_tokenizer_becomes_model_load_error(saved, tmp_path):
    broken = _copy_without(saved[0], tmp_path / "m")
    (broken / "tokenizer.json").write_text('{"model": "not a tokenizer"}')
    with pytest.raises(ModelLoadError, match="cannot load the tokenizer in"):
        load_tokenizer(broken)
