"""Several application processes share one local model: ``tepo-agent serve`` + ``HttpBackend``.

What it shows:

1. ``tepo-agent serve`` started as a subprocess: the in-process backend behind an
   OpenAI/vLLM-compatible HTTP API on 127.0.0.1 (a free port), which batches concurrent requests;
2. ``--apps`` application processes (this file run with ``--app I``), each a :class:`TepoAgent`
   over an :class:`HttpBackend` (the same client you would point at ``vllm serve``): prompts are
   still rendered to token ids here, so trajectories stay token-exact; entropy comes back as the
   top-k estimate with lower and upper bounds;
3. every app writing its runs into one shared SQLite store.

Run it::

    python examples/serve_and_http.py [--apps 2] [--db tepo-agent.db] [--model DIR]

Against vLLM instead, start ``tepo-agent vllm serve --model DIR`` (or your own ``vllm serve``)
and pass its URL and served model name to ``HttpBackendConfig``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tepo_agent import TrajectoryStore
from tepo_agent.net import free_port

SERVED_NAME = "tepo-local"
QUESTIONS = ["What is 17 * 23?", "What is 2 to the power 10?", "What is 144 / 12?"]


def wait_healthy(url: str, server: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"tepo-agent serve exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"tepo-agent serve did not answer on {url} within {timeout_s:.0f} s")


async def run_app(app: int, url: str, db: Path, model_dir: Path) -> None:
    """One application process: an agent whose model is the shared server."""
    from tepo_agent import AgentConfig, ChatFormat, HttpBackend, HttpBackendConfig, TepoAgent
    from tepo_agent.tools import make_calculator_tool

    vocab_size = int(json.loads((model_dir / "config.json").read_text())["vocab_size"])
    backend = HttpBackend(
        # "topk": this example shows the estimate with bounds; the default, "auto", would take
        # tepo-agent serve's exact entropies instead
        HttpBackendConfig(url, SERVED_NAME, entropy_estimator="topk", top_logprobs=5),
        vocab_size=vocab_size,
    )
    config = AgentConfig(max_tool_calls=2, max_new_tokens=32, seed=app)
    fmt = ChatFormat.from_pretrained(model_dir)
    try:
        with TrajectoryStore(db) as store:
            agent = TepoAgent(backend, fmt, [make_calculator_tool()], config, store)
            result = await agent.arun(QUESTIONS[app % len(QUESTIONS)], app_tag=f"http-app-{app}")
    finally:
        await backend.aclose()
    first = result.trajectory.assistant_turns()[0]
    lower, upper = first.entropy_lower or [], first.entropy_upper or []
    print(
        f"app {app}: stored {result.trajectory_id} (policy v{result.trajectory.policy_version}), "
        f"{len(result.tool_calls)} tool calls, turn 0 H ≈ {result.turn_entropies[0]:.3f} "
        f"({first.entropy_kind}; mean bounds {sum(lower) / max(1, len(lower)):.3f}.."
        f"{sum(upper) / max(1, len(upper)):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--apps", type=int, default=2, help="application processes")
    parser.add_argument("--db", type=Path, default=Path("tepo-agent.db"))
    parser.add_argument("--model", type=Path, help="model directory (default: the default model)")
    parser.add_argument("--app", type=int, help=argparse.SUPPRESS)  # set in the app processes
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from tepo_agent.paths import resolve_model_dir

    model_dir = resolve_model_dir(args.model)
    if args.app is not None:
        asyncio.run(run_app(args.app, args.url, args.db, model_dir))
        return

    url = f"http://127.0.0.1:{free_port()}"
    serve = [
        sys.executable, "-m", "tepo_agent", "serve", "--model", str(model_dir),
        "--port", url.rsplit(":", 1)[1], "--served-model-name", SERVED_NAME,
    ]  # fmt: skip
    print(f"$ tepo-agent {' '.join(serve[3:])}")
    server = subprocess.Popen(serve)
    try:
        wait_healthy(url, server)
        print(f"serving {SERVED_NAME} at {url}; starting {args.apps} application processes")
        app_args = ["--url", url, "--db", str(args.db), "--model", str(model_dir)]
        apps = [
            subprocess.Popen([sys.executable, __file__, "--app", str(i), *app_args])
            for i in range(args.apps)
        ]
        failed = [p.args for p in apps if p.wait() != 0]
        if failed:
            sys.exit(f"{len(failed)} application process(es) failed")
        with TrajectoryStore(args.db) as store:
            tags = sorted({s.app_tag or "" for s in store.list(limit=10_000)})
            print(f"{store.count()} trajectories in {args.db} from {', '.join(tags)}")
    finally:
        server.send_signal(signal.SIGINT)  # uvicorn shuts down cleanly on Ctrl-C
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
