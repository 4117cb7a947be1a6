"""The session's throwaway PostgreSQL server does not outlive a pytest run killed by SIGTERM
(CI's time limit): ``postgres_server`` stops it before the process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent

HOLD = """
import time

def test_hold(postgres_server):
    print("ROOT", postgres_server.root, flush=True)
    time.sleep(120)
"""


def _postmaster_running(data_dir: Path) -> bool:
    """A live process whose command line names ``data_dir`` (the postmaster's ``-D``)."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in cmdline and "postgres" in cmdline:
            return True
    return False


def test_sigterm_stops_the_session_server(tmp_path: Path) -> None:
    (tmp_path / "test_hold.py").write_text(HOLD)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    # tests/conftest.py as a plugin gives the inner run the fixture
    argv = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "conftest", "-p", "no:cacheprovider"]
    proc = subprocess.Popen(
        [*argv, str(tmp_path / "test_hold.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    root = None
    assert proc.stdout is not None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if line.startswith("ROOT "):
            root = Path(line.split(" ", 1)[1].strip())
            break
        assert time.monotonic() < deadline
    assert root is not None, "the inner run never started its server"
    assert _postmaster_running(root / "data")

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == -signal.SIGTERM  # it still dies of the signal
    assert not _postmaster_running(root / "data")
    assert not root.exists()
