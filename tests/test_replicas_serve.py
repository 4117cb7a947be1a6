"""Two real ``tepo-agent serve`` replicas behind HttpBackend, kept on one policy by the fleet.

Each replica is its own process with its own weights directory (another "host"): the fleet
follower serves version 1's files over HTTP and each replica fetches and verifies them. Agent runs
go through both; one replica is killed (SIGKILL) with requests in flight; the runs go on through
the other with every run stored once; the killed one is restarted on the old weights and the
follower brings it to the live version, after which it serves requests again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.cli import main
from tepo_agent.net import free_port
from tepo_agent.policy.fleet import FleetTarget
from tepo_agent.policy.hotswap import PolicyFollower
from tepo_agent.policy.manifest import directory_sha256
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.policy.weights_server import WeightsServer
from tepo_agent.store import TrajectoryStore

sys.path.insert(0, str(Path(__file__).parent / "trainer"))
from _tepo_data import agent_for, make_model

RUNS, MORE_RUNS = 24, 8


class Replica:
    """One ``tepo-agent serve`` process on its own port and weights directory."""

    def __init__(self, root: Path, base: Path, wait: Callable[..., None]) -> None:
        self.root, self.port, self.wait = root, free_port(), wait
        self.model = Path(shutil.copytree(base, root / "base"))  # the replica host's own copy
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = [sys.executable, "-m", "tepo_agent", "serve", "--model", str(self.model),
               "--port", str(self.port), "--served-model-name", "m", "--device", "cpu",
               "--weights-root", str(self.root), "--log-level", "warning"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def served_version(self) -> int:
        return int(httpx.get(f"{self.url}/v1/models").json()["data"][0]["policy_version"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def setup(
    tmp_path: Path, wait_healthy: Callable[..., None]
) -> Iterator[tuple[Path, Path, list[Replica]]]:
    publisher = tmp_path / "publisher"
    base = make_model(publisher / "base", seed=0)
    v1 = make_model(publisher / "policy-v1", seed=1)
    db = tmp_path / "t.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(base))
        version = registry.register(
            str(v1), kind="full", parent=0, metrics={"sha256": directory_sha256(v1)}
        )
        registry.promote(version)
    replicas = [Replica(tmp_path / f"host-{i}", base, wait_healthy) for i in range(2)]
    try:
        for replica in replicas:
            replica.start()
        for replica in replicas:
            assert replica.proc is not None
            wait_healthy(replica.url, replica.proc, 400)
        yield db, base, replicas
    finally:
        for replica in replicas:
            replica.stop()


@pytest.mark.slow
@pytest.mark.timeout(
    1200
)  # two serve processes start in ~20 s on a quiet machine, minutes on a busy one
async def test_runs_survive_a_killed_replica_and_the_restarted_one_is_brought_to_live(
    setup: tuple[Path, Path, list[Replica]],
    wait_healthy: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    db, base, (a, b) = setup
    started = time.monotonic()
    with WeightsServer() as weights:
        fleet = FleetTarget([a.url, b.url], weights=weights)
        follower = PolicyFollower(db, fleet, current_version=-1)
        assert await asyncio.to_thread(follower.poll_once) == 1
        assert fleet.versions() == {1: [a.url, b.url]}
        assert a.served_version() == b.served_version() == 1

        config = HttpBackendConfig(
            [a.url, b.url], "m", entropy_estimator="server", backoff_s=0.2, max_backoff_s=0.5
        )
        backend = HttpBackend(config, vocab_size=512)
        with TrajectoryStore(db) as store:
            agent = agent_for(backend, base, store)

            # Two waves: the runs of one wave share a batch on each replica and finish together,
            # so a is killed once it has answered the first wave and holds the second in flight.
            def wave(numbers: range) -> list[asyncio.Future[Any]]:
                return [asyncio.ensure_future(agent.arun(f"What is {i} + 3?")) for i in numbers]

            runs = wave(range(RUNS // 2))
            while backend.replica_status()[0].answered < 1:  # a has served
                await asyncio.sleep(0.01)
            second = wave(range(RUNS // 2, RUNS))
            runs += second
            while backend.replica_status()[0].outstanding == 0:  # requests in flight on a
                assert not all(r.done() for r in second), "the second wave ended before the kill"
                await asyncio.sleep(0.001)
            a.stop()  # SIGKILL mid-load
            results = await asyncio.gather(*runs)
            killed = backend.replica_status()[0]
            assert not killed.up and killed.last_error

            stored = [store.get(r.trajectory_id) for r in results]
            assert store.count() == RUNS  # every run stored ...
            assert len({t.id for t in stored}) == RUNS  # ... once
            turns = [t for traj in stored for t in traj.assistant_turns()]
            assert {t.replica for t in turns} == {a.url, b.url}
            assert {t.policy_version for t in turns} == {1}

            a.start()  # restarted on the old weights (its --model is version 0)
            assert a.proc is not None
            wait_healthy(a.url, a.proc, 400)
            assert a.served_version() == 0
            status = ["fleet", "status", "--db", str(db), "--replica", f"{a.url},{b.url}"]
            assert await asyncio.to_thread(main, status) == 1  # a is behind
            assert "(not live)" in capsys.readouterr().out
            assert await asyncio.to_thread(follower.poll_once) == 1  # caught up
            assert a.served_version() == 1 and fleet.versions() == {1: [a.url, b.url]}
            assert await asyncio.to_thread(main, [*status, "--json"]) == 0
            shown = json.loads(capsys.readouterr().out)
            assert shown["live_version"] == 1
            assert [(r["url"], r["version"]) for r in shown["replicas"]] == [(a.url, 1), (b.url, 1)]
            await asyncio.to_thread(follower.poll_once)  # nothing left to do
            assert fleet.versions() == {1: [a.url, b.url]}

            await asyncio.sleep(0.6)  # a's next health probe is due
            more = [await agent.arun(f"What is {i} - 1?") for i in range(MORE_RUNS)]
            assert store.count() == RUNS + MORE_RUNS
            later = [t for r in more for t in store.get(r.trajectory_id).assistant_turns()]
            assert a.url in {t.replica for t in later}  # routed to again
            assert {t.policy_version for t in later} == {1}
        await backend.aclose()
        follower.stop()
        fleet.close()
    print(f"replica test body: {time.monotonic() - started:.1f} s")
