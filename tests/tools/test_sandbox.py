"""The python sandbox contains hostile code, and keeps serving afterwards.

Every hostile snippet here runs inside the sandbox's own containment (pids and memory cgroups,
the unprivileged user, an empty network namespace); the fork bomb and process tests first
ASSERT that the containment is active on this machine, so they can never run uncontained.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tepo_agent.errors import ConfigError, SandboxError, ToolError
from tepo_agent.tools.python_tool import make_python_tool
from tepo_agent.tools.sandbox import PythonSandbox, SandboxConfig

LIMITS = SandboxConfig(timeout_s=3.0, cpu_time_s=5, memory_bytes=256 * 1024**2, max_processes=16)


@pytest.fixture(scope="module")
def sandbox() -> PythonSandbox:
    return PythonSandbox(LIMITS)


def assert_still_serves(sandbox: PythonSandbox) -> None:
    """After a hostile run, a normal snippet still runs, through the tool too."""
    result = sandbox.run("print(sum(range(10)))")
    assert result.ok and result.stdout == "45\n"
    assert make_python_tool(sandbox=sandbox).invoke({"code": "6 * 7"}) == "42"


def leftover_cgroups() -> list[str]:
    return [name for name in os.listdir("/sys/fs/cgroup/pids") if f"-{os.getpid()}-" in name]


def test_full_containment_is_active_on_this_machine(sandbox: PythonSandbox) -> None:
    containment = sandbox.containment
    assert containment.complete, containment.describe()
    assert containment.process_limit_enforced
    assert containment.user == "nobody"
    assert containment.describe().startswith("contained")


def test_runs_code_and_prints_the_last_expression(sandbox: PythonSandbox) -> None:
    result = sandbox.run("import os\nprint('uid', os.getuid())\nx = 20\nx + 22")
    assert result.ok
    assert result.stdout == "uid 65534\n42\n"
    assert result.notes == ()


def test_exception_is_reported_with_a_traceback_from_the_snippet(sandbox: PythonSandbox) -> None:
    result = sandbox.run("print('before')\n{}['missing']")
    assert result.exit_code == 1 and not result.ok
    assert result.stdout == "before\n"
    assert 'File "snippet.py", line 2' in result.stderr
    assert "KeyError: 'missing'" in result.stderr
    assert "<string>" not in result.stderr  # the runner's own frames are hidden


def test_infinite_loop_is_killed_at_the_wall_timeout(sandbox: PythonSandbox) -> None:
    result = sandbox.run("print('started', flush=True)\nwhile True:\n    pass")
    assert result.timed_out and result.exit_code is None
    assert result.stdout == "started\n"
    assert leftover_cgroups() == []
    assert_still_serves(sandbox)


def test_fork_bomb_is_contained_and_killed(sandbox: PythonSandbox) -> None:
    assert sandbox.containment.cgroups, "refusing to run a fork bomb without the pids cgroup"
    assert sandbox.containment.process_limit_enforced
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    result = sandbox.run(bomb)
    assert result.timed_out
    assert leftover_cgroups() == []
    assert_still_serves(sandbox)


def test_processes_left_behind_are_killed(sandbox: PythonSandbox) -> None:
    assert sandbox.containment.cgroups
    code = (
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '60.0417'], start_new_session=True)\n"
        "print(p.pid)"
    )
    result = sandbox.run(code)
    assert result.ok and not result.timed_out
    # pids inside the sandbox's pid namespace are not the host's: find it by its argv
    assert processes_with_argv("sleep\x0060.0417") == []


def processes_with_argv(marker: str) -> list[int]:
    """Host pids, alive and not zombies, whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline and is_running(int(entry.name)):
            found.append(int(entry.name))
    return found


def is_running(pid: int) -> bool:
    """Alive and not a zombie (a killed orphan stays a zombie until init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_memory_bomb_hits_the_memory_limit(sandbox: PythonSandbox) -> None:
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(2**20))")
    assert not result.ok and result.memory_exceeded
    with pytest.raises(SandboxError, match="memory limit of 256 MiB exceeded"):
        make_python_tool(sandbox=sandbox).func(code="x = bytearray(2**40)")  # type: ignore[attr-defined]
    assert_still_serves(sandbox)


def test_memory_spread_over_processes_hits_the_cgroup_limit(sandbox: PythonSandbox) -> None:
    # Each child stays under RLIMIT_AS (256 MiB); together they exceed the run's memory cgroup.
    assert sandbox.containment.cgroups, "refusing to run without the memory cgroup"
    code = (
        "import os\n"
        "kids = []\n"
        "for _ in range(4):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        block = b'x' * (150 * 2**20)\n"
        "        import time; time.sleep(2)\n"
        "        os._exit(0)\n"
        "    kids.append(pid)\n"
        "print([os.waitpid(k, 0)[1] for k in kids])\n"
    )
    result = sandbox.run(code)
    assert result.memory_exceeded
    assert_still_serves(sandbox)


def test_huge_print_is_capped_with_a_note(sandbox: PythonSandbox) -> None:
    result = sandbox.run("import sys\n_ = sys.stdout.write('x' * 100_000_000)")
    assert result.ok
    assert result.stdout_bytes == 100_000_000
    assert len(result.stdout) == LIMITS.max_output_bytes
    assert f"stdout truncated: kept the first {LIMITS.max_output_bytes} of 100000000 bytes" in (
        result.notes
    )
    text = make_python_tool(sandbox=sandbox).invoke({"code": "print('y' * 10**7)"})
    assert "[note: stdout truncated" in text and len(text) < 2 * LIMITS.max_output_bytes
    assert_still_serves(sandbox)


def test_network_connections_fail(sandbox: PythonSandbox) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)"
        result = sandbox.run(code)
        assert not result.ok
        assert "Network is unreachable" in result.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()  # nothing ever connected
    assert_still_serves(sandbox)


def test_parent_environment_is_not_visible(
    sandbox: PythonSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEPO_TEST_SECRET", "hunter2-secret")
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        "print(os.getppid())\n"
        "text = open(f'/proc/{os.getppid()}/environ').read()\n"
        "print(sorted(item.split('=')[0] for item in text.split('\\0') if item))\n"
    )
    result = sandbox.run(code)
    assert result.ok, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    # The parent it can see is the sandbox's own reaper (pid 1 of its pid namespace), which
    # holds the same clean environment; the runtime's process is not visible at all.
    # (bubblewrap adds PWD, the working directory, for the code it starts.)
    keys = "['HOME', 'LANG', 'PATH', 'TMPDIR']"
    assert result.stdout.splitlines() == ["['HOME', 'LANG', 'PATH', 'PWD', 'TMPDIR']", "1", keys]
    assert_still_serves(sandbox)


def test_working_directory_is_removed_afterwards(sandbox: PythonSandbox) -> None:
    code = "import os\nopen('data.txt', 'w').write('kept?')\nprint(os.getcwd())"
    result = sandbox.run(code)
    workdir = Path(result.stdout.strip())
    assert workdir.name.startswith("tepo-sandbox-")
    assert not workdir.exists()


def test_file_size_limit_applies(sandbox: PythonSandbox) -> None:
    config = SandboxConfig(max_file_bytes=1024**2, timeout_s=3.0)
    small = PythonSandbox(config)
    result = small.run("open('big', 'wb').write(b'0' * 2 * 1024**2)")
    assert not result.ok
    assert "File too large" in result.stderr or result.exit_code == -25  # SIGXFSZ


def test_require_mode_refuses_weaker_isolation() -> None:
    with pytest.raises(SandboxError, match="runs as the calling user"):
        PythonSandbox(SandboxConfig(user=None, containment="require"))


def test_degraded_mode_says_so_in_every_result() -> None:
    degraded = PythonSandbox(SandboxConfig(user=None, isolate_network=False, timeout_s=3.0))
    assert not degraded.containment.complete
    result = degraded.run("print('hi')")
    assert result.ok and result.stdout == "hi\n"
    assert any(note.startswith("sandbox degraded:") for note in result.notes)
    assert "network isolation disabled" in result.notes[0]
    text = make_python_tool(sandbox=degraded).invoke({"code": "print('hi')"})
    assert "[note: sandbox degraded:" in text


def test_code_over_the_size_limit_is_refused(sandbox: PythonSandbox) -> None:
    with pytest.raises(SandboxError, match="the limit is"):
        sandbox.run("x = 1\n" * LIMITS.max_code_chars)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout_s": 0},
        {"memory_bytes": 1024},
        {"max_processes": -1},
        {"max_open_files": 3},
        {"containment": "strict"},
        {"user": "no-such-user-here"},
    ],
)
def test_invalid_config_is_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SandboxConfig(**kwargs)  # type: ignore[arg-type]


def test_python_tool_errors_are_tool_errors_the_model_can_read(sandbox: PythonSandbox) -> None:
    tool = make_python_tool(sandbox=sandbox)
    assert tool.name == "python" and "code" in tool.args
    run = tool.func  # type: ignore[attr-defined]  # the tool's function raises typed errors
    with pytest.raises(ToolError, match="ZeroDivisionError") as caught:
        run(code="print('partial')\n1/0")
    assert "stdout before the failure:\npartial" in str(caught.value)
    with pytest.raises(SandboxError, match="timed out after 3 s"):
        run(code="import time\ntime.sleep(60)")
    # As a tool call (what agents do), the error comes back to the model as an error message.
    call = {"type": "tool_call", "id": "c", "name": "python", "args": {"code": "1/0"}}
    message = tool.invoke(call)
    assert message.status == "error" and "ZeroDivisionError" in message.text
    assert tool.invoke({"code": "import sys\nprint('warn', file=sys.stderr)"}) == (
        "(no output)\nstderr:\nwarn"
    )


@pytest.mark.slow
def test_runs_of_a_killed_runtime_are_killed_and_reaped(tmp_path: Path) -> None:
    assert PythonSandbox(LIMITS).containment.cgroups
    runner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from tepo_agent.tools.sandbox import PythonSandbox, SandboxConfig\n"
            "PythonSandbox(SandboxConfig(timeout_s=120)).run(\n"
            "    'import subprocess, time\\n'\n"
            '    \'subprocess.Popen(["sleep", "120"])\\n\'\n'
            "    'time.sleep(120)')\n",
        ]
    )
    try:
        pattern = f"tepo-sandbox-{runner.pid}-*"
        deadline = time.monotonic() + 90
        members: list[str] = []
        # bubblewrap, its reaper (pid 1 of the run's pid namespace), python, sleep
        while time.monotonic() < deadline and len(members) < 4:
            groups = list(Path("/sys/fs/cgroup/pids").glob(pattern))
            if groups:
                members = (groups[0] / "cgroup.procs").read_text().split()
            time.sleep(0.2)
        assert len(members) == 4, "the sandboxed run never started"
    finally:
        runner.kill()
        runner.wait()
    PythonSandbox(LIMITS)  # reaps the dead runtime's groups and working directory
    assert list(Path("/sys/fs/cgroup/pids").glob(pattern)) == []
    assert list(Path(tempfile.gettempdir()).glob(pattern)) == []
    assert not any(is_running(int(pid)) for pid in members)
