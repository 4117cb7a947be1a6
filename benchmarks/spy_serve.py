"""Where the time of `tepo-agent serve`'s backend worker goes, sampled with py-spy (issue 15).

Starts `tepo-agent serve` on the shipped default model, warms it, then records it with
``py-spy record --pid`` while ``--clients`` closed-loop clients send ``--requests`` requests of
the benchmark's agent-shaped traffic (:class:`benchmarks.bench_continuous_batching.Traffic`),
and prints the share of the busy samples of one thread (``--root``, by default the backend
worker ``Scheduler._serve``; ``Runner.run`` is the event loop) per function: inclusive, then
self. py-spy is not a project dependency: ``pip install py-spy`` first.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.spy_serve [--clients 8] [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

IDLE = ("select (selectors.py", "Condition.wait", "Queue.get")
"""Frames of a thread that waits: their samples are not counted as busy."""


def shares(raw: Path, root: str) -> tuple[int, Counter[str], Counter[str]]:
    """Busy samples under frame ``root`` in py-spy's raw (collapsed) output, and per function
    the samples that include it (inclusive) and that end in it (self)."""
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if root not in stack or any(idle in stack for idle in IDLE):
            continue
        frames = stack.split(";")
        frames = frames[next(i for i, f in enumerate(frames) if root in f) :]
        n = int(count)
        busy += n
        for name in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            inclusive[name] += n
        self_[frames[-1]] += n
    return busy, inclusive, self_


def record(clients: int, requests: int, raw: Path) -> float:
    """Serve, warm, record the server with py-spy during the load; tokens/s of the load."""
    from benchmarks._common import start_serve
    from benchmarks.bench_continuous_batching import Traffic, _serve_rate
    from tepo_agent.net import free_port
    from tepo_agent.paths import resolve_model_dir

    model = resolve_model_dir(None)
    vocab = int(json.loads((model / "config.json").read_text())["vocab_size"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start_serve(model, port, "--served-model-name", "bench", "--log-level", "warning")
    try:
        asyncio.run(_serve_rate(url, Traffic.make(8, vocab, seed=-1), 8, server.pid))
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                str(raw),
                "--pid",
                str(server.pid),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # py-spy attached
        traffic = Traffic.make(requests, vocab, seed=7)
        rate, _ = asyncio.run(_serve_rate(url, traffic, clients, server.pid))
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=60)
        return rate
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--requests", type=int, default=200, help="requests during the record")
    parser.add_argument("--root", default="Scheduler._serve", help="the thread's top frame")
    parser.add_argument("--top", type=int, default=40, help="functions to list")
    args = parser.parse_args()
    if shutil.which("py-spy") is None:
        sys.exit("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "serve.raw"
        rate = record(args.clients, args.requests, raw)
        busy, inclusive, self_ = shares(raw, args.root)
    print(f"{args.clients} clients, {rate:,.0f} tokens/s; {busy} busy samples under {args.root}")
    for title, counts in (("inclusive", inclusive), ("self", self_)):
        print(f"\n| {title} | share |\n|---|---:|")
        for name, n in counts.most_common(args.top):
            print(f"| `{name}` | {100 * n / max(busy, 1):.1f}% |")


if __name__ == "__main__":
    main()
