"""Continuous batching and prefix caching in the in-process backend (issue 15, part 1).

Measures, in one run, side by side:

1. agent runs (:class:`~tepo_agent.agent.TepoAgent` on the default model with its tools, the real
   calculator, a real SQLite store) with 1, 8 and 64 runs in flight at once (closed loop: a run
   that ends is replaced by the next), through ONE in-process backend: runs/s, sampled tokens/s,
   p50/p99 latency of one assistant turn (one ``generate`` call), and the ratio to one at a
   time (targets: 8 concurrent >= 3x, 64 concurrent >= 5x);
2. ``tepo-agent serve`` with agent-shaped traffic: every request is the same 320-token system
   prefix plus 20-80 tokens of its own, asking for 4-48 new tokens, from 8 closed-loop HTTP
   clients against 1 (target >= 3x the tokens/s), with the server's prefix cache on and off;
3. the cost of the exact entropy under continuous batching: decode tokens/s of 8 concurrent
   requests with and without it (target < 2%).

Each section builds its own backend (or server) and closes it before the next: a second backend
alive in the same process halves throughput on 2 cores (benchmarks/RESULTS.md, issue 2).

Run from the repository root::

    python -m benchmarks.bench_continuous_batching [--model DIR] [--runs 64] [--requests 48]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks._common import machine, start_serve
from benchmarks._timed import TimedBackend
from benchmarks.bench_generation import entropy_kernel_share
from tepo_agent.agent import AgentConfig, TepoAgent
from tepo_agent.backends.base import SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.net import free_port
from tepo_agent.paths import resolve_model_dir
from tepo_agent.store import TrajectoryStore
from tepo_agent.tasks.math_tasks import math_suite
from tepo_agent.tasks.world import EVAL_SEED, world_tools
from tepo_agent.tools import make_calculator_tool


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) a process has used so far: this one, or ``pid`` (Linux /proc)."""
    if pid is None:
        return time.process_time()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Row:
    concurrency: int
    runs: int
    wall_s: float
    cpu_s: float
    tokens: int
    latencies: tuple[float, ...]

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall_s

    @property
    def runs_per_cpu_s(self) -> float:
        return self.runs / self.cpu_s

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def latency_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _closed_loop(agent: TepoAgent, timer: TimedBackend, questions: list[str], c: int) -> Row:
    """Run every question with ``c`` runs in flight at once; a finished run starts the next."""
    timer.reset()
    todo = iter(questions)

    async def worker() -> None:
        for question in todo:
            await agent.arun(question)

    start, cpu = time.perf_counter(), cpu_seconds()
    await asyncio.gather(*(worker() for _ in range(c)))
    wall = time.perf_counter() - start
    return Row(c, len(questions), wall, cpu_seconds() - cpu, timer.tokens, tuple(timer.latencies))


def bench_agent(model_dir: Path, runs: int, levels: Sequence[int], rounds: int) -> None:
    tools = [make_calculator_tool()]
    if (model_dir / "world").is_dir():  # a bootstrapped model knows its world's tool schemas
        tools = world_tools(model_dir / "world")
    questions = [t.question for t in math_suite(runs, seed=EVAL_SEED)]
    fmt = ChatFormat.from_pretrained(model_dir)
    config = AgentConfig(max_tool_calls=2, max_new_tokens=64, seed=0)
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=64)
    timer = TimedBackend(backend)
    results: dict[int, list[Row]] = {c: [] for c in levels}
    with tempfile.TemporaryDirectory() as tmp, TrajectoryStore(Path(tmp) / "b.db") as store:
        agent = TepoAgent(timer, fmt, tools, config, store=store)

        async def all_rounds() -> None:
            await _closed_loop(agent, timer, questions[:8], 8)  # warm-up
            for _ in range(rounds):  # levels alternate, so drift on the VM hits all alike
                for c in levels:
                    results[c].append(await _closed_loop(agent, timer, questions, c))

        asyncio.run(all_rounds())
    stats = backend.stats
    backend.close()
    base = statistics.median(r.runs_per_s for r in results[levels[0]])
    base_cpu = statistics.median(r.runs_per_cpu_s for r in results[levels[0]])
    print(f"\n### 1. Agent runs, in process ({rounds} rounds, median round by runs/s)\n")
    print(
        "| runs in flight | runs | runs/s | tokens/s | turn p50 ms | turn p99 ms | vs one "
        "| runs per CPU-s | vs one (CPU) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in levels:
        ordered = sorted(results[c], key=lambda r: r.runs_per_s)
        r = ordered[len(ordered) // 2]
        per_cpu = statistics.median(x.runs_per_cpu_s for x in results[c])
        print(
            f"| {c} | {r.runs} | {r.runs_per_s:.2f} | {r.tokens_per_s:,.0f} | "
            f"{r.latency_ms(0.5):.0f} | {r.latency_ms(0.99):.0f} | "
            f"**{r.runs_per_s / base:.2f}x** | {per_cpu:.2f} | {per_cpu / base_cpu:.2f}x |"
        )
    share = stats.cached_prompt_tokens / max(1, stats.prompt_tokens)
    print(
        f"\nbackend: {stats.requests} turns in {stats.steps} decode steps, largest batch "
        f"{stats.max_batch}; prefix cache served {share:.0%} of {stats.prompt_tokens:,} prompt "
        "tokens"
    )


# -- 2. tepo-agent serve with agent-shaped traffic ------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """Agent-shaped requests: one shared system prefix, then each request's own tokens."""

    prefix: tuple[int, ...]
    requests: tuple[tuple[tuple[int, ...], int], ...]  # (own tokens, new tokens)

    @classmethod
    def make(cls, n: int, vocab: int, seed: int) -> Traffic:
        """``n`` requests; the prefix is the same for every seed, the rest is the seed's own."""
        top = min(vocab, 500)  # plain tokens, below the default model's special ids
        prefix = tuple(random.Random(0).randrange(top) for _ in range(320))
        rng = random.Random(seed + 1)
        own = tuple(
            (tuple(rng.randrange(top) for _ in range(rng.randint(20, 80))), rng.randint(4, 48))
            for _ in range(n)
        )
        return cls(prefix, own)


async def _serve_rate(
    base_url: str, traffic: Traffic, clients: int, pid: int
) -> tuple[float, float]:
    """Closed-loop clients each sending the next request when the last answered: tokens per
    second, and per CPU-second of the server process ``pid``."""
    todo = iter(enumerate(traffic.requests))
    tokens = 0

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for i, (own, new) in todo:
            body = {"model": "bench", "prompt": [*traffic.prefix, *own], "max_tokens": new,
                    "temperature": 1.0, "seed": i, "logprobs": 0}  # fmt: skip
            response = await http.post(f"{base_url}/v1/completions", json=body)
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=120) as http:
        start, cpu = time.perf_counter(), cpu_seconds(pid)
        await asyncio.gather(*(client(http) for _ in range(clients)))
        wall = time.perf_counter() - start
        return tokens / wall, tokens / (cpu_seconds(pid) - cpu)


def bench_serve(model_dir: Path, n: int, rounds: int) -> None:
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    print(f"\n### 2. `tepo-agent serve`, agent-shaped traffic ({n} requests per setting, "
          f"{rounds} rounds, median)\n")  # fmt: skip
    print(
        "| prefix cache | 1 client tokens/s | 8 clients tokens/s | 8 vs 1 "
        "| 1 client tokens per server CPU-s | 8 clients | 8 vs 1 (CPU) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    per_round: dict[str, list[float]] = {}
    for cache_mb in (256, 0):
        port = free_port()
        flags = ["--served-model-name", "bench", "--device", "cpu", "--log-level", "warning"]
        proc = start_serve(model_dir, port, *flags, "--prefix-cache-mb", str(cache_mb))
        try:
            url = f"http://127.0.0.1:{port}"
            warm_up = Traffic.make(8, vocab, seed=-1)
            asyncio.run(_serve_rate(url, warm_up, 8, proc.pid))
            rates: dict[int, list[tuple[float, float]]] = {1: [], 8: []}
            for round_ in range(rounds):
                for clients in (1, 8):  # fresh requests: only the shared prefix is ever cached
                    traffic = Traffic.make(n, vocab, seed=100 * round_ + clients)
                    rate = asyncio.run(_serve_rate(url, traffic, clients, proc.pid))
                    rates[clients].append(rate)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        one, eight = (statistics.median(r for r, _ in rates[c]) for c in (1, 8))
        one_cpu, eight_cpu = (statistics.median(r for _, r in rates[c]) for c in (1, 8))
        label = f"on ({cache_mb} MiB)" if cache_mb else "off"
        per_round[label] = [e / o for (o, _), (e, _) in zip(rates[1], rates[8], strict=True)]
        print(
            f"| {label} | {one:,.0f} | {eight:,.0f} | **{eight / one:.2f}x** | "
            f"{one_cpu:,.0f} | {eight_cpu:,.0f} | {eight_cpu / one_cpu:.2f}x |"
        )
    print()  # a round's 1 and 8 clients run back to back: their ratio moves less with the machine
    for label, ratios in per_round.items():
        listed = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"8 vs 1 round by round, prefix cache {label}: {listed}")


# -- 3. the cost of exact entropy -----------------------------------------------------------------


async def _decode_rate(
    backend: TransformersBackend, prompts: list[list[int]]
) -> tuple[float, float]:
    """Tokens per second and per CPU-second of this process (the worker thread's included)."""
    params = SamplingParams(max_tokens=128, temperature=0)
    start, cpu = time.perf_counter(), cpu_seconds()
    gens = await asyncio.gather(*(backend.generate(p, params) for p in prompts))
    tokens = sum(len(g.token_ids) for g in gens)
    return tokens / (time.perf_counter() - start), tokens / (cpu_seconds() - cpu)


def bench_entropy(model_dir: Path, rounds: int) -> None:
    rng = random.Random(7)
    prompts = [[rng.randrange(500) for _ in range(rng.randint(20, 80))] for _ in range(8)]
    rates: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for round_ in range(rounds):  # one backend alive at a time; the two alternate, and which
        for entropy in (True, False)[:: 1 if round_ % 2 else -1]:  # goes first alternates too
            backend = TransformersBackend.from_pretrained(  # no end id: every row decodes
                model_dir,  # its 128 tokens (the shipped model ends these prompts in ~9)
                device="cpu",
                compute_entropy=entropy,
                prefix_cache_bytes=0,
                eos_token_ids=(),
            )
            try:
                asyncio.run(_decode_rate(backend, prompts))  # warm-up
                rates[entropy].append(asyncio.run(_decode_rate(backend, prompts)))
            finally:
                backend.close()
    on, off = (statistics.median(r for r, _ in rates[flag]) for flag in (True, False))
    on_cpu, off_cpu = (statistics.median(r for _, r in rates[flag]) for flag in (True, False))
    print(f"\n### 3. Exact entropy under continuous batching (8 concurrent, 128 greedy tokens, "
          f"median of {rounds})\n")  # fmt: skip
    print("| measure | with entropy | without | overhead |")
    print("|---|---:|---:|---:|")
    print(f"| tokens/s | {on:,.0f} | {off:,.0f} | **{off / on - 1:+.1%}** |")
    print(
        f"| tokens per CPU-s | {on_cpu:,.0f} | {off_cpu:,.0f} | **{off_cpu / on_cpu - 1:+.1%}** |"
    )
    # End to end, a 1% cost is below this machine's run-to-run noise; the kernels alone are not.
    vocab = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    step_s = 8 / off_cpu  # CPU seconds of a decode step of 8 rows, without entropy
    extra_us, share = entropy_kernel_share(vocab, step_s, 8)
    print(
        f"\nentropy kernels alone, 8 rows: +{extra_us:.1f} µs per decode step = **{share:.2%}** "
        f"of a step ({1000 * step_s:.2f} ms CPU)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", metavar="DIR", help="model directory (default: the default)")
    parser.add_argument("--runs", type=int, default=64, help="agent runs per concurrent round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each setting")
    parser.add_argument("--requests", type=int, default=48, help="serve requests per setting")
    parser.add_argument(
        "--sections", default="agent,serve,entropy", help="comma-separated sections to run"
    )
    args = parser.parse_args()
    model_dir = resolve_model_dir(args.model)
    print("## Continuous batching and prefix caching (issue 15)\n")
    print(
        f"Command: `{' '.join(['python -m benchmarks.bench_continuous_batching', *sys.argv[1:]])}`"
    )
    print(f"Machine: {machine()}")
    print(f"Model: {model_dir}")
    if "agent" in args.sections:
        bench_agent(model_dir, args.runs, (1, 8, 64), args.rounds)
    if "serve" in args.sections:
        bench_serve(model_dir, args.requests, args.rounds)
    if "entropy" in args.sections:
        bench_entropy(model_dir, max(3, args.rounds))


if __name__ == "__main__":
    main()
