"""Generation benchmarks on the default model (issue: token-exact generation with live entropy).

Measures, in one run, side by side:
1. tokens/s with and without exact entropy tracking (target: < 2% overhead), batch 1 and 8;
2. 8 concurrent requests against 8 single requests in turn (target: >= 4x the throughput);
3. ``tepo-agent serve`` + the HTTP backend (exact entropies from the server, ``logprobs=0``)
   against the in-process backend (ratio);
4. the error of the top-k entropy estimate against the exact entropy for k = 1, 5, 10, 20 (and
   of the sampled-token surprisal) on the model's own sampled agent trajectories: mean absolute
   error per token, how often the bounds hold, and how often the sign of ΔH agrees with the exact.

Run from the repository root: ``python -m benchmarks.bench_generation [--model DIR]``
(default model: the bootstrapped default if built, else the random-weight default).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks._common import machine, start_serve
from tepo_agent.backends import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import entropy_from_logits, topk_entropy_bounds
from tepo_agent.net import free_port
from tepo_agent.paths import resolve_model_dir
from tepo_agent.tasks import KnowledgeBase, knowledge_suite, math_suite

KS = (1, 5, 10, 20)


def prompts(fmt: ChatFormat, n: int) -> list[list[int]]:
    tasks = math_suite(n // 2, seed=7) + knowledge_suite(KnowledgeBase(), n - n // 2, seed=7)
    return [fmt.render([{"role": "user", "content": t.question}]) for t in tasks]


def throughput(
    backend: TransformersBackend | HttpBackendConfig,
    ps: list[list[int]],
    params: SamplingParams,
    concurrent: bool,
    vocab: int = 0,
) -> float:
    """Generated tokens per second for ``ps``, all at once or one after another.

    An ``HttpBackendConfig`` gets a fresh HTTP client inside the timed event loop (an httpx
    client belongs to the loop that opened it); its connection set-up is part of the time.
    """

    async def go() -> int:
        b = (
            HttpBackend(backend, vocab_size=vocab)
            if isinstance(backend, HttpBackendConfig)
            else backend
        )
        try:
            if concurrent:
                gens = await asyncio.gather(*(b.generate(p, params) for p in ps))
            else:
                gens = [await b.generate(p, params) for p in ps]
        finally:
            if isinstance(b, HttpBackend):
                await b.aclose()
        return sum(len(g.token_ids) for g in gens)

    start = time.perf_counter()
    tokens = asyncio.run(go())
    return tokens / (time.perf_counter() - start)


def entropy_overhead(
    model_dir: Path, ps: list[list[int]], params: SamplingParams, repeats: int
) -> list[tuple[str, float, float]]:
    """Tokens/s with and without exact entropy, interleaved repeats, one backend alive at a time.

    Only one backend lives at any moment: measured here, a second, idle TransformersBackend in
    the same process halves the first one's batch-8 throughput (its worker's OpenMP team
    competes for the 2 cores), which would swamp the effect being measured.
    """
    cases = (("batch 1", ps[:4], False), ("batch 8", ps[:8], True))
    runs: dict[tuple[str, bool], list[float]] = {
        (label, e): [] for label, _, _ in cases for e in (True, False)
    }
    for _ in range(repeats):
        for entropy in (False, True):
            backend = TransformersBackend.from_pretrained(
                model_dir, device="cpu", compute_entropy=entropy
            )
            try:
                throughput(backend, ps[:8], params, True)  # warm-up
                for label, batch, concurrent in cases:
                    runs[(label, entropy)].append(throughput(backend, batch, params, concurrent))
            finally:
                backend.close()
    return [
        (label, statistics.median(runs[(label, True)]), statistics.median(runs[(label, False)]))
        for label, _, _ in cases
    ]


def entropy_kernel_share(vocab: int, step_s: float, batch: int) -> tuple[float, float]:
    """Microseconds per decode step that exact entropy adds (its kernels alone, timed over many
    calls on (batch, V) logits: less noisy than end-to-end tokens/s), and their share of a step."""
    from tepo_agent.entropy import token_logprobs_and_entropy

    logits = torch.randn(batch, vocab)
    ids = logits.argmax(-1)

    def with_entropy() -> None:
        token_logprobs_and_entropy(logits, ids)[1].tolist()

    def without() -> None:  # what the backend does with compute_entropy=False
        lp = torch.log_softmax(logits, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
        torch.full_like(lp, math.nan).tolist()

    n = 5000
    times = []
    for fn in (with_entropy, without) * 3:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n)
    extra = statistics.median(times[0::2]) - statistics.median(times[1::2])
    return 1e6 * extra, extra / step_s


def serve_ratio(
    model_dir: Path, ps: list[list[int]], params: SamplingParams, vocab: int, repeats: int
) -> list[tuple[str, float, float]]:
    """Tokens/s through `tepo-agent serve` + HttpBackend and in process.

    Measured in two phases (in process first, with no server running; then the server): on two
    cores, a second process or backend holding a warm PyTorch thread pool takes CPU from the one
    being measured, which would make either side look slower than it is.
    """
    import httpx

    cases = (("batch 1", ps[:4], False), ("batch 8", ps[:8], True))
    r_http: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    r_local: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    local = TransformersBackend.from_pretrained(model_dir, device="cpu")
    try:
        throughput(local, ps[:8], params, True)  # warm-up
        for _ in range(repeats):
            for label, batch, concurrent in cases:
                r_local[label].append(throughput(local, batch, params, concurrent))
    finally:
        local.close()
    port = free_port()
    proc = start_serve(model_dir, port, "--device", "cpu")
    try:
        served = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()["data"][0]["id"]
        cfg = HttpBackendConfig(
            base_url=f"http://127.0.0.1:{port}", model=served, entropy_estimator="server"
        )
        throughput(cfg, ps[:8], params, True, vocab)  # warm-up
        for _ in range(repeats):
            for label, batch, concurrent in cases:
                r_http[label].append(throughput(cfg, batch, params, concurrent, vocab))
    finally:
        proc.terminate()
        proc.wait(30)
    return [
        (label, statistics.median(r_http[label]), statistics.median(r_local[label]))
        for label, _, _ in cases
    ]


def estimator_errors(
    model_dir: Path, n_runs: int
) -> tuple[dict[str, float], dict[str, float], dict[str, float], int, int]:
    """Run the agent (T = 1 sampling), then compare estimators with the exact entropy."""
    from langchain_core.utils.function_calling import convert_to_openai_tool  # noqa: F401

    from tepo_agent.agent import TepoAgent
    from tepo_agent.agent.state import AgentConfig
    from tepo_agent.model.io import load_causal_lm
    from tepo_agent.tasks.world import build_world, world_tools

    world = model_dir / "world"
    if not (world / "search.db").is_file():
        world = Path(model_dir.parent / "bench-world")
        build_world(0, world)
    fmt = ChatFormat.from_pretrained(model_dir)
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu")
    agent = TepoAgent(
        backend, fmt, world_tools(world), config=AgentConfig(max_tool_calls=4, max_new_tokens=48)
    )
    kb = KnowledgeBase(seed=0)
    tasks = math_suite(n_runs // 2, seed=11) + knowledge_suite(kb, n_runs - n_runs // 2, seed=11)
    results = [agent.run(t.question) for t in tasks]
    backend.close()
    model = load_causal_lm(model_dir, device="cpu", dtype="float32")
    vocab = model.config.vocab_size
    abs_err: dict[str, list[float]] = {f"top-{k}": [] for k in KS} | {"surprisal": []}
    inside: dict[str, list[bool]] = {f"top-{k}": [] for k in KS}
    sign: dict[str, list[bool]] = {name: [] for name in abs_err}
    tokens = 0
    deltas = 0
    for res in results:
        traj = res.trajectory
        ids = torch.tensor([traj.full_token_ids()])
        with torch.no_grad():
            logits = model(ids).logits[0].float()  # (T, V)
        turn_means: dict[str, list[float]] = {name: [] for name in abs_err} | {"exact": []}
        pos = len(traj.prompt_token_ids)
        for turn in traj.turns:
            n = len(turn.token_ids)
            if turn.role == "assistant" and n:
                lg = logits[pos - 1 : pos - 1 + n]  # logits that predicted this turn's tokens
                exact = entropy_from_logits(lg)  # (n,)
                logp = torch.log_softmax(lg, -1)
                top = logp.topk(max(KS), dim=-1).values  # (n, 20)
                target = torch.tensor(turn.token_ids)
                surprisal = -logp.gather(-1, target[:, None])[:, 0]
                turn_means["exact"].append(float(exact.mean()))
                turn_means["surprisal"].append(float(surprisal.mean()))
                abs_err["surprisal"] += (surprisal - exact).abs().tolist()
                for k in KS:
                    est = topk_entropy_bounds(top[:, :k], vocab)
                    name = f"top-{k}"
                    abs_err[name] += (est.estimate - exact.double()).abs().tolist()
                    inside[name] += (
                        (est.lower <= exact.double() + 1e-5) & (exact.double() <= est.upper + 1e-5)
                    ).tolist()
                    turn_means[name].append(float(est.estimate.mean()))
                tokens += n
            pos += n
        exact_d = [
            b - a for a, b in zip(turn_means["exact"], turn_means["exact"][1:], strict=False)
        ]
        deltas += len(exact_d)
        for name in sign:
            est_d = [b - a for a, b in zip(turn_means[name], turn_means[name][1:], strict=False)]
            sign[name] += [(e < 0) == (x < 0) for e, x in zip(est_d, exact_d, strict=True)]
    mae = {k: statistics.fmean(v) for k, v in abs_err.items()}
    agree = {k: (statistics.fmean(v) if v else math.nan) for k, v in sign.items()}
    held = {k: statistics.fmean(v) for k, v in inside.items()}
    return mae, agree, held, tokens, deltas


def _section_entropy(args: argparse.Namespace, model_dir: Path, ps: list[list[int]],
                     params: SamplingParams) -> None:  # fmt: skip
    print("## 1. Exact entropy tracking overhead (in process)\n")
    print("| batch | tokens/s with entropy | tokens/s without | overhead |\n|---|---|---|---|")
    rows = entropy_overhead(model_dir, ps, params, args.repeats)
    for label, r_on, r_off in rows:
        print(f"| {label} | {r_on:,.0f} | {r_off:,.0f} | {100 * (r_off / r_on - 1):+.1f}% |")
    b1, b8 = rows[0][1], rows[1][1]
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    for label, batch, rate in (("batch 1", 1, b1), ("batch 8", 8, b8)):
        us, share = entropy_kernel_share(vocab, batch / rate, batch)
        print(
            f"\nentropy kernels alone, {label}: +{us:.1f} µs per decode step = "
            f"**{100 * share:.2f}%** of a step ({1e3 * batch / rate:.2f} ms)",
            end="",
        )
    print()
    print(
        f"\n## 2. Batching\n\n8 concurrent requests: {b8:,.0f} tokens/s; one at a time: "
        f"{b1:,.0f} tokens/s; ratio **{b8 / b1:.2f}x**\n"
    )


def _section_serve(args: argparse.Namespace, model_dir: Path, ps: list[list[int]],
                   params: SamplingParams) -> None:  # fmt: skip
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    print("## 3. `tepo-agent serve` + HTTP backend against in process\n")
    print("| batch | serve tokens/s | in-process tokens/s | ratio |\n|---|---|---|---|")
    for label, r_http, r_local in serve_ratio(model_dir, ps, params, vocab, args.repeats):
        print(f"| {label} | {r_http:,.0f} | {r_local:,.0f} | {r_http / r_local:.2f} |")
    print()


def _section_estimators(args: argparse.Namespace, model_dir: Path) -> None:
    print("## 4. Live entropy estimators against the exact entropy\n")
    mae, agree, held, tokens, deltas = estimator_errors(model_dir, args.agent_runs)
    print(
        f"{args.agent_runs} agent runs sampled at T = 1, {tokens} assistant tokens, "
        f"{deltas} tool calls with a ΔH.\n"
    )
    print(
        "| estimator | mean abs error (nats) | bounds hold | sign of ΔH agrees |\n|---|---|---|---|"
    )
    for name in mae:
        bounds = f"{100 * held[name]:.1f}%" if name in held else "n/a"
        print(f"| {name} | {mae[name]:.4f} | {bounds} | {100 * agree[name]:.1f}% |")


SECTIONS = ("entropy", "serve", "estimators")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: bootstrapped or init)")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--agent-runs", type=int, default=24)
    parser.add_argument("--section", choices=SECTIONS, help="run one section in this process")
    args = parser.parse_args()
    model_dir = resolve_model_dir(args.model)
    if args.section is None:
        # Each section in a fresh process: on 2 cores, PyTorch thread pools left warm by one
        # section's backends measurably slow the next section's (seen: batch 8 halved).
        print(
            f"# bench_generation\n\nmodel: `{model_dir}`  \nmachine: {machine()}  \n"
            f"new tokens per request: {args.new_tokens}, repeats: {args.repeats} (median); "
            "each section in its own process\n",
            flush=True,
        )
        for section in SECTIONS:
            subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_generation", "--section", section,
                 "--model", str(model_dir), "--new-tokens", str(args.new_tokens),
                 "--repeats", str(args.repeats), "--agent-runs", str(args.agent_runs)],
                check=True,
            )  # fmt: skip
        return
    fmt = ChatFormat.from_pretrained(model_dir)
    ps = prompts(fmt, 8)
    # Greedy, fixed prompts: the compared runs decode exactly the same tokens.
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0)
    if args.section == "entropy":
        _section_entropy(args, model_dir, ps, params)
    elif args.section == "serve":
        _section_serve(args, model_dir, ps, params)
    else:
        _section_estimators(args, model_dir)


if __name__ == "__main__":
    main()
