"""Where a `tepo-agent serve` request's CPU time goes, 1 client against 8 (issue 15).

Starts `tepo-agent serve` in a subprocess whose backend worker times its phases in CPU time of
its own thread (admission = prefix-cache lookup + prefill forward + first sample + join; decode
steps, of which the sampling with exact entropy and the rows leaving; handing results to the
event loop; with the packed forward, admission is the lookup only and the joining rows' prompts
are computed in the decode steps' packed forward pass, counted in both columns) and whose
event-loop thread (HTTP: parsing, routes, JSON, sockets) is timed as a whole. Sends the
benchmark's agent-shaped traffic (:class:`benchmarks.bench_continuous_batching.Traffic`) from 1
and 8 closed-loop clients, alternating, and prints per request: CPU ms of the HTTP thread and
of each worker phase.

Run from the repository root::

    OMP_NUM_THREADS=1 python -m benchmarks.profile_serve [--rounds 2] [--requests 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

PHASES = {
    "admit": ("tepo_agent.backends._decode", "DecodeBatch", "admit"),
    "prefill (lookup + forward)": ("tepo_agent.backends._decode", "DecodeBatch", "_prefill"),
    "decode steps": ("tepo_agent.backends._decode", "DecodeBatch", "step"),
    "packed forward": ("tepo_agent.backends._packed", "PackedLM", "forward"),
    "sampling + entropy": ("tepo_agent.backends._decode", "DecodeBatch", "_sample"),
    "rows leaving": ("tepo_agent.backends._kv", "BatchKV", "select"),
    "rows joining": ("tepo_agent.backends._kv", "BatchKV", "extend"),
    "results to the loop": ("tepo_agent.backends._scheduler", "Scheduler", "_deliver"),
}


def _serve_with_accounting(out: str, argv: list[str]) -> None:
    """`tepo-agent serve argv` with the phases above timed; SIGUSR1 appends them to ``out``."""
    import importlib

    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        def g(*args: Any, **kwargs: Any) -> Any:
            start = time.thread_time()
            try:
                return f(*args, **kwargs)
            finally:
                spent[name] += time.thread_time() - start

        return g

    for name, (module, cls, method) in PHASES.items():
        owner = getattr(importlib.import_module(module), cls)
        setattr(owner, method, timed(name, getattr(owner, method)))
    loop_cpu = [time.thread_time()]

    def dump(*_: object) -> None:  # runs in the main thread: the event loop's
        now = time.thread_time()
        spent["HTTP (event-loop thread)"] = now - loop_cpu[0]
        loop_cpu[0] = now
        with open(out, "a") as fh:
            fh.write(json.dumps(spent) + "\n")
        spent.clear()

    signal.signal(signal.SIGUSR1, dump)
    from tepo_agent.cli import main

    main(argv)


def _drive(rounds: int, n: int) -> None:
    from benchmarks._common import wait_healthy
    from benchmarks.bench_continuous_batching import Traffic, _serve_rate
    from tepo_agent.net import free_port
    from tepo_agent.paths import resolve_model_dir

    model = resolve_model_dir(None)
    vocab = int(json.loads((model / "config.json").read_text())["vocab_size"])
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "phases.jsonl"
        flags = ["--served-model-name", "bench", "--device", "cpu", "--log-level", "warning"]
        argv = ["serve", "--model", str(model), "--port", str(port), *flags]
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.profile_serve", "--server", str(out), *argv],
            stderr=subprocess.PIPE,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, proc)
            asyncio.run(_serve_rate(url, Traffic.make(8, vocab, seed=-1), 8, proc.pid))
            _phases(proc, out)
            print(
                "| clients | tokens/s | tokens per server CPU-s | " + " | ".join(_columns()) + " |"
            )
            print("|---:|---:|---:|" + "---:|" * len(_columns()))
            for round_ in range(rounds):
                for clients in (1, 8):
                    traffic = Traffic.make(n, vocab, seed=100 * round_ + clients)
                    rate, per_cpu = asyncio.run(_serve_rate(url, traffic, clients, proc.pid))
                    spent = _phases(proc, out)
                    ms = [1000 * spent.get(c, 0.0) / n for c in _columns()]
                    print(f"| {clients} | {rate:,.0f} | {per_cpu:,.0f} | "
                          + " | ".join(f"{x:.1f}" for x in ms) + " |", flush=True)  # fmt: skip
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    print(
        "\nCPU ms per request; admit holds the prefill, its first sample and the join, "
        "decode steps hold their sampling and the rows leaving."
    )


def _columns() -> list[str]:
    return ["HTTP (event-loop thread)", *PHASES]


def _phases(proc: subprocess.Popen[bytes], out: Path) -> dict[str, float]:
    lines = out.read_text().splitlines() if out.exists() else []
    os.kill(proc.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = out.read_text().splitlines() if out.exists() else []
        if len(now) > len(lines):
            return dict(json.loads(now[-1]))
        time.sleep(0.05)
    raise RuntimeError("the server did not report its phases")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--server":
        _serve_with_accounting(sys.argv[2], sys.argv[3:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds of 1 then 8 clients")
    parser.add_argument("--requests", type=int, default=32, help="requests per setting")
    args = parser.parse_args()
    _drive(args.rounds, args.requests)


if __name__ == "__main__":
    main()
