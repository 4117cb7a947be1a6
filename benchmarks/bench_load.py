"""Load: many agent sessions in several application processes against ``tepo-agent serve``
while ``tepo-agent train --watch`` publishes new versions that the server hot-swaps.

    python benchmarks/bench_load.py --processes 4 --sessions 16 --seconds 120 --versions 3
    python benchmarks/bench_load.py --processes 4 --sessions 16 --seconds 20 --versions 1  # CI

Everything runs on 127.0.0.1 in fresh processes on a tiny random-weight default model: one
``tepo-agent serve --db`` (following the registry), one ``tepo-agent train --watch --no-gate``
(every ``--every-n`` scored runs: train one step and publish), and ``--processes`` application
processes each running ``--sessions`` concurrent agent sessions (HttpBackend with the server's
exact entropies, the calculator tool, every run stored in the shared SQLite file and scored
1/0 alternately in groups of two so the trainer has a signal). The load goes on for at least
``--seconds`` and until ``--versions`` versions were published and each served for
``settle_s``, and never past ``max_seconds``: then every session finishes the run it is in and
stops, so the run is bounded in time and in requests.

Each application process records, for every run, the trajectory id it stored and the policy
version each of its generations reported (through the backend, independently of the store),
the latency of each turn (one generation request), and its errors by kind. The report: p50/p99
turn latency, runs/s, trajectories lost (reported by an app but missing from the store), runs
whose stored per-turn versions differ from what the server reported, versions published and
versions seen serving, and errors by kind. The figures and the command are in RELIABILITY.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the benchmarks package lives at the root
    sys.path.insert(0, str(ROOT))

from benchmarks._common import wait_healthy  # noqa: E402
from benchmarks._timed import TimedBackend  # noqa: E402

_TURNS: contextvars.ContextVar[list[tuple[int, float]]] = contextvars.ContextVar("turns")


@dataclass(frozen=True)
class LoadConfig:
    """One load run."""

    processes: int = 4
    """Application processes."""
    sessions: int = 16
    """Concurrent agent sessions in each process (processes x sessions in flight at once)."""
    seconds: float = 60.0
    """Least seconds of load."""
    versions: int = 1
    """The load goes on until the trainer published this many versions (or ``max_seconds``)."""
    settle_s: float = 5.0
    """Seconds of load after the last awaited publish (so its version serves some turns)."""
    max_seconds: float = 600.0
    """The load stops here whatever was published (the report then says how many were)."""
    every_n: int = 32
    """The trainer retrains and publishes after this many new scored runs."""
    max_new_tokens: int = 12
    """Tokens per turn (a tiny model: the point is the traffic, not the answers)."""


@dataclass
class LoadReport:
    """What a load run measured (see the module docstring)."""

    config: dict[str, Any]
    runs: int
    lost: int
    version_mismatches: int
    turns: int
    p50_turn_s: float
    p99_turn_s: float
    runs_per_s: float
    load_s: float
    published: list[int]
    versions_serving: dict[str, int]
    errors: dict[str, int] = field(default_factory=dict)
    runs_switching_version: int = 0


# -- the application process ---------------------------------------------------------------


class _TimedBackend(TimedBackend):
    """Appends (policy version, seconds) of each generation to the session's list (a context
    variable, so concurrent sessions keep theirs apart)."""

    def record(self, generation: Any, seconds: float) -> None:
        _TURNS.get().append((generation.policy_version, seconds))


async def _session(agent: Any, store: Any, name: str, stop: asyncio.Event, out: dict) -> None:
    round_ = 0
    while not stop.is_set():
        turns: list[tuple[int, float]] = []
        _TURNS.set(turns)
        group = f"{name}-{round_ // 2}"
        try:
            result = await agent.arun(f"What is {round_ // 2} + 7?", group_id=group)
            store.record_feedback(result.trajectory_id, float(round_ % 2 == 0), source="load")
            out["runs"].append({"id": result.trajectory_id, "versions": [v for v, _ in turns]})
        except Exception as exc:  # counted by kind; the session goes on
            out["errors"][type(exc).__name__] += 1
        out["latencies"] += [s for _, s in turns]
        round_ += 1


async def _app(url: str, db: str, model_dir: str, sessions: int, tag: str,
               max_new_tokens: int) -> dict[str, Any]:  # fmt: skip
    from tepo_agent.agent.graph import AgentConfig, TepoAgent
    from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
    from tepo_agent.chat.format import ChatFormat
    from tepo_agent.store import TrajectoryStore
    from tepo_agent.tools import make_calculator_tool

    print("ready", flush=True)  # everything imported; the load starts on "go"
    await asyncio.to_thread(sys.stdin.readline)
    fmt = ChatFormat.from_pretrained(model_dir)
    config = HttpBackendConfig(
        base_url=url, model="model", entropy_estimator="server", timeout_s=120.0
    )
    backend = _TimedBackend(HttpBackend(config, vocab_size=len(fmt.tokenizer)))
    out: dict[str, Any] = {"runs": [], "errors": Counter(), "latencies": []}
    cfg = AgentConfig(max_tool_calls=1, max_new_tokens=max_new_tokens, max_total_tokens=900)
    with TrajectoryStore(db) as store:
        agent = TepoAgent(backend, fmt, [make_calculator_tool()], cfg, store=store)
        stop = asyncio.Event()

        async def wait_for_stop() -> None:  # the orchestrator writes "stop" (or closes stdin)
            await asyncio.to_thread(sys.stdin.readline)
            stop.set()

        await asyncio.gather(
            wait_for_stop(),
            *(_session(agent, store, f"{tag}-{i}", stop, out) for i in range(sessions)),
        )
    await backend.aclose()
    return out


def app_main(argv: list[str]) -> None:
    url, db, model_dir, sessions, tag, tokens, report = argv
    out = asyncio.run(_app(url, db, model_dir, int(sessions), tag, int(tokens)))
    Path(report).write_text(json.dumps(out))


# -- the orchestration ------------------------------------------------------------------------


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tepo_agent", *args]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_load(config: LoadConfig, workdir: Path) -> LoadReport:
    """Run the load (module docstring) in ``workdir``; returns its report."""
    from tepo_agent.model.default import DefaultModelConfig, init_model
    from tepo_agent.net import free_port
    from tepo_agent.policy.registry import PolicyRegistry

    tiny = DefaultModelConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=1024,
    )  # fmt: skip
    model_dir = init_model(workdir / "model", seed=0, config=tiny)
    db = workdir / "load.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    log = open(workdir / "servers.log", "wb")  # noqa: SIM115  # closed below
    serve = subprocess.Popen(
        _cli("serve", "--db", str(db), "--port", str(port), "--device", "cpu", "--poll-s", "0.2",
             "--max-batch-size", "32", "--served-model-name", "model", "--log-level", "warning"),
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    trainer = apps = None
    try:
        wait_healthy(url, serve, timeout_s=300)
        trainer = subprocess.Popen(
            _cli("train", "--db", str(db), "--watch", "--every-n", str(config.every_n),
                 "--poll-s", "1", "--batch", "8", "--lr", "1e-3", "--no-gate", "--device",
                 "cpu", "--no-progress"),
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        apps = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.bench_load",
                    "--app",
                    url,
                    str(db),
                    str(model_dir),
                    str(config.sessions),
                    f"p{i}",
                    str(config.max_new_tokens),
                    str(workdir / f"app{i}.json"),
                ],
                env=env,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
            for i in range(config.processes)
        ]
        for app in apps:  # every process has imported everything: the load starts together
            assert app.stdout is not None and app.stdout.readline().strip() == b"ready"
        started = time.monotonic()
        for app in apps:
            assert app.stdin is not None
            app.stdin.write(b"go\n")
            app.stdin.flush()
        _wait_for_publishes(config, db, started)
        for app in apps:
            assert app.stdin is not None
            app.stdin.write(b"stop\n")
            app.stdin.close()
        for app in apps:
            app.wait(timeout=600)
        load_s = time.monotonic() - started
    finally:
        for proc in [*(apps or []), trainer, serve]:
            if proc is not None:
                _stop(proc)
        log.close()
    reports = [json.loads((workdir / f"app{i}.json").read_text()) for i in range(len(apps))]
    return _report(config, db, reports, load_s)


def _wait_for_publishes(config: LoadConfig, db: Path, started: float) -> None:
    """Until ``config.seconds`` passed and ``config.versions`` were published ``settle_s`` ago,
    or ``config.max_seconds`` passed."""
    from tepo_agent.policy.registry import PolicyRegistry

    done_at = None
    with PolicyRegistry(db) as registry:
        while time.monotonic() - started < config.max_seconds:
            if done_at is None and len(registry.list()) - 1 >= config.versions:
                done_at = time.monotonic()
            if (
                done_at is not None
                and time.monotonic() - done_at >= config.settle_s
                and time.monotonic() - started >= config.seconds
            ):
                return
            time.sleep(0.5)


def _report(config: LoadConfig, db: Path, reports: list[dict], load_s: float) -> LoadReport:
    from tepo_agent.policy.registry import PolicyRegistry
    from tepo_agent.store import TrajectoryStore

    runs = [run for report in reports for run in report["runs"]]
    latencies = sorted(s for report in reports for s in report["latencies"])
    errors: Counter[str] = Counter()
    for report in reports:
        errors.update(report["errors"])
    lost = mismatches = switching = 0
    serving: Counter[str] = Counter()
    with TrajectoryStore(db) as store:
        for run in runs:
            try:
                stored = store.get(run["id"])
            except Exception:
                lost += 1
                continue
            versions = [t.policy_version for t in stored.assistant_turns()]
            mismatches += versions != run["versions"]
            switching += len(set(versions)) > 1
            serving.update(str(v) for v in versions)
        published = [r.version for r in PolicyRegistry(store).list() if r.version > 0]
    return LoadReport(
        config=asdict(config),
        runs=len(runs),
        lost=lost,
        version_mismatches=mismatches,
        turns=len(latencies),
        p50_turn_s=statistics.median(latencies) if latencies else float("nan"),
        p99_turn_s=latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        if latencies
        else float("nan"),
        runs_per_s=len(runs) / load_s,
        load_s=load_s,
        published=published,
        versions_serving=dict(sorted(serving.items())),
        errors=dict(errors),
        runs_switching_version=switching,
    )


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--app":
        app_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--every-n", type=int, default=32)
    parser.add_argument("--versions", type=int, default=3, help="versions to await")
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary directory")
    args = parser.parse_args()
    import tempfile

    config = LoadConfig(
        processes=args.processes,
        sessions=args.sessions,
        seconds=args.seconds,
        every_n=args.every_n,
        versions=args.versions,
        max_seconds=args.max_seconds,
    )
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tepo-load-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run_load(config, workdir)
    print(json.dumps(asdict(report), indent=2))


if __name__ == "__main__":
    main()
