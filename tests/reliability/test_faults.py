"""Faults injected for real: a backend SIGKILLed mid-request, a closed port, 5xx / truncated /
schema-violating answers, a database write lock held past the busy timeout, a filesystem
filled up, an application SIGKILLed mid-trajectory, a trainer SIGKILLed between registering and
promoting, a corrupted checkpoint, and clock jumps (libfaketime in subprocesses).

Each case checks what the caller sees (a typed error naming the cause, or a retry that
succeeds), that nothing committed is lost (integrity_check, counts, field-exact round trips)
and that the live policy keeps serving. Cases already covered elsewhere: the trainer SIGKILLed
mid-step (tests/trainer/test_resume.py), an application SIGKILLed mid-write with four writers
(tests/store_conformance/test_store_concurrency.py), a deleted checkpoint directory
(tests/test_hotswap.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _store_data import make_trajectory
from test_serve import SMALL, LiveServer

from tepo_agent.backends.base import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import BackendError, BackendUnavailableError, StoreError
from tepo_agent.model.default import init_model
from tepo_agent.net import free_port
from tepo_agent.policy.hotswap import InProcessTarget, PolicyFollower
from tepo_agent.policy.registry import PolicyRegistry
from tepo_agent.server.app import create_app
from tepo_agent.store import TrajectoryStore

HERE = Path(__file__).parent
FAULT_SERVER = HERE / "_fault_server.py"
PARAMS = SamplingParams(max_tokens=4, temperature=0.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("model") / "tiny", seed=0, config=SMALL)


@pytest.fixture(scope="module")
def upstream(model_dir: Path) -> Iterator[str]:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=4)
    app = create_app(backend, ChatFormat.from_pretrained(model_dir), model_name="tiny")
    with LiveServer(app) as server:
        yield server.url
    backend.close()


def expect_line(proc: subprocess.Popen[str], text: str, timeout_s: float = 60) -> None:
    """Wait for ``proc`` to print ``text`` on a line of its own (fail, never hang)."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, f"no {text!r} from the subprocess within {timeout_s:g} s"
    assert proc.stdout.readline().strip() == text


@contextlib.contextmanager
def fault_server(port: int, mode: str, upstream: str = "") -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, str(FAULT_SERVER), str(port), mode, upstream],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        expect_line(proc, "ready")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def http_backend(port: int, **config: object) -> HttpBackend:
    options = {"max_retries": 5, "backoff_s": 0.2, "timeout_s": 30.0, **config}
    return HttpBackend(
        HttpBackendConfig(
            base_url=f"http://127.0.0.1:{port}",
            model="tiny",
            entropy_estimator="server",
            **options,  # type: ignore[arg-type]
        ),
        vocab_size=512,
    )


def generate(backend: HttpBackend) -> object:
    async def once() -> object:
        try:
            return await backend.generate([1, 2, 3], PARAMS)
        finally:
            await backend.aclose()

    return asyncio.run(once())


def test_backend_killed_mid_request_comes_back_and_the_request_succeeds(upstream: str) -> None:
    port = free_port()
    outcome: list[object] = []
    with fault_server(port, "hang") as hung:
        worker = threading.Thread(target=lambda: outcome.append(generate(http_backend(port))))
        worker.start()
        expect_line(hung, "hanging")
        os.kill(hung.pid, signal.SIGKILL)  # dies with the request in flight
        hung.wait()
    with fault_server(port, "proxy", upstream):  # back on the same port
        worker.join(timeout=60)
    assert len(outcome) == 1
    generation = outcome[0]
    assert len(generation.token_ids) == 4 and generation.policy_version == 0  # type: ignore[attr-defined]


def test_a_closed_port_is_a_clear_unavailable_error() -> None:
    port = free_port()
    with pytest.raises(BackendUnavailableError, match=r"after 2 attempt\(s\).*is `vllm serve`"):
        generate(http_backend(port, max_retries=1, backoff_s=0.05))


@pytest.mark.parametrize(
    ("mode", "error", "words"),
    [
        ("5xx", BackendUnavailableError, "HTTP 503: overloaded"),
        ("truncated", BackendUnavailableError, "RemoteProtocolError"),
        ("schema", BackendError, "choices"),
    ],
)
def test_bad_answers_are_typed_errors_naming_the_cause(
    upstream: str, mode: str, error: type[Exception], words: str
) -> None:
    port = free_port()
    with fault_server(port, mode, upstream), pytest.raises(error, match=words):
        generate(http_backend(port, max_retries=1, backoff_s=0.05))


# -- the database ----------------------------------------------------------------------------


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def test_a_write_lock_held_past_the_busy_timeout(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    with TrajectoryStore(db) as store:
        first = store.get(store.add(make_trajectory(task="kept")))
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sqlite3, sys, time
            conn = sqlite3.connect({str(db)!r}, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            print("locked", flush=True)
            time.sleep(3)
            conn.execute("COMMIT")
        """)],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    expect_line(holder, "locked")
    with TrajectoryStore(db, busy_timeout_s=0.5) as store:
        started = time.monotonic()
        with pytest.raises(StoreError, match=r"locked|busy"):
            store.add(make_trajectory(task="refused"))
        assert time.monotonic() - started < 2.5  # gave up at the timeout, not at the holder
        holder.wait(timeout=30)
        second = store.add(make_trajectory(task="after"))  # the lock is gone: it goes through
        assert store.count() == 2
        assert store.get(first.id) == first and store.get(second).task == "after"
    assert integrity(db) == "ok"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)])
    assert done.returncode == 0, "mounting a 2 MiB tmpfs needs root (the suite runs as root)"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_refuses_the_write_and_keeps_what_was_committed(small_fs: Path) -> None:
    db = small_fs / "t.db"
    filler = small_fs / "filler"
    with TrajectoryStore(db) as store:
        kept = [store.get(store.add(make_trajectory(task=f"kept {i}"))) for i in range(5)]
        with open(filler, "wb") as handle, contextlib.suppress(OSError):
            while True:  # fill the 2 MiB filesystem to the last block
                handle.write(b"\0" * 65536)
                handle.flush()
        with pytest.raises(StoreError, match=r"disk is full.*nothing of this write was"):
            store.add(make_trajectory(task="x" * 1_000_000))
        assert store.count() == 5
        assert [store.get(t.id) for t in kept] == kept
    with TrajectoryStore(db) as store:  # reopened on the still-full disk: everything reads
        assert [store.get(t.id) for t in kept] == kept
    assert integrity(db) == "ok"
    filler.unlink()
    with TrajectoryStore(db) as store:
        store.add(make_trajectory(task="after the disk was freed"))
        assert store.count() == 6
    assert integrity(db) == "ok"


# -- processes killed mid-way ----------------------------------------------------------------

MID_TRAJECTORY = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from _scripted_backend import ScriptedBackend
from langchain_core.tools import StructuredTool
from tepo_agent.agent.graph import AgentConfig, TepoAgent
from tepo_agent.chat.format import ChatFormat
from tepo_agent.store import TrajectoryStore

def stall(x: str) -> str:
    Path({marker!r}).touch()
    time.sleep(120)
    return x

fmt = ChatFormat.from_pretrained({model!r})
call = '<tool_call>\\n{{"name": "stall", "arguments": {{"x": "a"}}}}\\n</tool_call>'
tool = StructuredTool.from_function(func=stall, name="stall", description="Stalls.")
with TrajectoryStore({db!r}) as store:
    agent = TepoAgent(ScriptedBackend({model!r}, fmt, ["done"]), fmt, [tool], AgentConfig(),
                      store=store)
    agent.run("first")
    print("first stored", flush=True)
    agent = TepoAgent(ScriptedBackend({model!r}, fmt, [call, "never"]), fmt, [tool],
                      AgentConfig(), store=store)
    agent.run("second")
"""


def test_an_app_killed_mid_trajectory_commits_none_of_it(model_dir: Path, tmp_path: Path) -> None:
    db, marker = tmp_path / "t.db", tmp_path / "in-tool"
    script = MID_TRAJECTORY.format(
        tests=str(HERE.parent), marker=str(marker), model=str(model_dir), db=str(db)
    )
    app = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        expect_line(app, "first stored", 120)
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert app.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(app.pid, signal.SIGKILL)  # inside the second run's tool call
        app.wait()
    finally:
        if app.poll() is None:
            app.kill()
    assert app.returncode == -signal.SIGKILL
    assert integrity(db) == "ok"
    with TrajectoryStore(db) as store:
        assert store.count() == 1  # the first run only: the killed one left nothing behind
        (only,) = store.list()
        assert store.get(only.id).task == "first" and store.get(only.id).status == "ok"


def test_a_trainer_killed_between_register_and_promote_changes_nothing_live(
    model_dir: Path, tmp_path: Path
) -> None:
    db = tmp_path / "t.db"
    candidate = tmp_path / "ckpt-1"
    shutil.copytree(model_dir, candidate)
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, signal
            from tepo_agent.policy.registry import PolicyRegistry
            registry = PolicyRegistry({str(db)!r})
            registry.register({str(candidate)!r}, kind="full", parent=0)
            os.kill(os.getpid(), signal.SIGKILL)  # publish_checkpoint's promote never runs
            registry.promote(1)
        """)],
        check=False,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    with PolicyRegistry(db) as registry:
        assert [(r.version, r.status) for r in registry.list()] == [(0, "live"), (1, "candidate")]
        with TransformersBackend.from_pretrained(model_dir, device="cpu") as backend:
            follower = PolicyFollower(db, InProcessTarget(backend), current_version=0)
            assert follower.poll_once() is None and backend.policy_version == 0
            # a restarted trainer publishes the next version past the orphaned candidate
            registry.promote(registry.register(str(candidate), kind="full", parent=0))
            assert follower.poll_once() == 2 and backend.policy_version == 2
    assert integrity(db) == "ok"


@pytest.mark.parametrize("damage", ["truncated weights", "garbage weights", "emptied"])
def test_a_corrupted_checkpoint_is_refused_and_the_live_policy_keeps_serving(
    model_dir: Path, tmp_path: Path, damage: str
) -> None:
    db = tmp_path / "t.db"
    broken = tmp_path / "ckpt"
    shutil.copytree(model_dir, broken)
    weights = next(broken.glob("*.safetensors"))
    if damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage weights":
        weights.write_bytes(os.urandom(weights.stat().st_size))
    else:
        for path in broken.iterdir():
            path.unlink()
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))
        registry.promote(registry.register(str(broken), kind="full", parent=0))
    with TransformersBackend.from_pretrained(model_dir, device="cpu") as backend:
        before = asyncio.run(backend.generate([1, 2, 3], PARAMS))
        follower = PolicyFollower(db, InProcessTarget(backend), current_version=0)
        with pytest.raises(Exception) as caught:
            follower.poll_once()
        assert str(caught.value)  # a message naming what is wrong with the directory
        after = asyncio.run(backend.generate([1, 2, 3], PARAMS))
    assert backend.policy_version == 0 and follower.current_version == 0
    assert after.token_ids == before.token_ids  # the same weights, not half-loaded ones


# -- clock jumps ------------------------------------------------------------------------------

PUBLISH = """
import sys
from tepo_agent.policy.registry import PolicyRegistry
with PolicyRegistry(sys.argv[1]) as registry:
    version = registry.register(sys.argv[2], kind="full", parent=0)
    registry.promote(version)
    print(version, registry.get(version).created_at)
"""


def test_registry_order_survives_clock_jumps(model_dir: Path, tmp_path: Path) -> None:
    faketime = shutil.which("faketime")
    assert faketime, "apt-get install faketime (scripts/system-packages.txt)"
    db = tmp_path / "t.db"
    with PolicyRegistry(db) as registry:
        registry.ensure_base(str(model_dir))
    seen = []
    for offset in ("+10y", "-20y", "+0d"):  # forward, far back, then back to now
        out = subprocess.run(
            [faketime, "-f", offset, sys.executable, "-c", PUBLISH, str(db), str(model_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        seen.append((int(out[0]), float(out[1])))
    assert [v for v, _ in seen] == [1, 2, 3]
    assert seen[1][1] < seen[2][1] < seen[0][1]  # the wall clock really jumped
    with PolicyRegistry(db) as registry:
        live = registry.live()
        assert live is not None and live.version == 3  # the last promoted, not the "newest"
        assert [r.status for r in registry.list()] == ["retired"] * 3 + ["live"]
        with TransformersBackend.from_pretrained(model_dir, device="cpu") as backend:
            follower = PolicyFollower(db, InProcessTarget(backend), current_version=0)
            assert follower.poll_once() == 3
    assert integrity(db) == "ok"


def test_a_read_only_filesystem_refuses_the_store_with_the_cause(small_fs: Path) -> None:
    db = small_fs / "t.db"
    with TrajectoryStore(db) as store:
        kept = store.get(store.add(make_trajectory(task="kept")))
    # as root, a file's mode does not stop writes: make the filesystem itself read-only
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        with pytest.raises(StoreError, match=r"full or read-only.*nothing of this write"):
            TrajectoryStore(db)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    with TrajectoryStore(db) as store:
        assert store.get(kept.id) == kept
        store.add(make_trajectory(task="after"))
        assert store.count() == 2
    assert integrity(db) == "ok"
