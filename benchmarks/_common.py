"""Helpers shared by the benchmark scripts: machine description, timing, model choice."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads, Python {platform.python_version()}"
    )


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def start_serve(model_dir: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    """``tepo-agent serve`` in a subprocess; returns once ``/health`` answers."""

    argv = [sys.executable, "-m", "tepo_agent", "serve", "--model", str(model_dir)]
    proc = subprocess.Popen(
        [*argv, "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
    except RuntimeError:
        proc.kill()
        raise
    return proc


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    """Block until ``url``/health answers 200; RuntimeError if ``proc`` exits first (with the end
    of its stderr when piped) or nothing answers within ``timeout_s``."""
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            said = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"tepo-agent serve exited with {proc.returncode}: {said}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"tepo-agent serve did not come up at {url} within {timeout_s:g} s")
