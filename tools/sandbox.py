"""Run untrusted Python in a contained subprocess: the engine behind the ``python`` tool.

Every run gets a fresh process, ``python -I`` (isolated mode: no ``PYTHON*`` variables, no user
site-packages, the script directory not on ``sys.path``), with:

What is isolated (when the containment is active; :class:`Containment` says which are):

- **process count** — a cgroup v1 ``pids`` group (``pids.max``) per run; without cgroups,
  ``RLIMIT_NPROC`` of the unprivileged user instead (as root the kernel ignores it, and it is
  shared by every process of that user, so it is only the fallback);
- **memory** — a cgroup v1 ``memory`` group for the whole run, plus ``RLIMIT_AS`` per process;
- **user** — the child drops to ``nobody`` (setgroups/setgid/setuid before exec), so it cannot
  read root's files (``/root``, other processes' ``/proc/PID/environ``) or leave its cgroups;
- **network** — a new, empty network namespace (``unshare(CLONE_NEWNET)``): no interface is up,
  so every connection, loopback included, fails;
- **time** — a wall-clock timeout, after which every process of the run is SIGKILLed (the whole
  cgroup, frozen first, and the process group), and ``RLIMIT_CPU`` per process;
- **files** — a temporary working directory (``HOME`` and ``TMPDIR`` too) removed afterwards,
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core dumps;
- **a dying runtime** — the main process gets ``PR_SET_PDEATHSIG=SIGKILL``; the cgroups and
  working directories a killed runtime leaves are reaped when the next sandbox is created;
- **environment** — a clean one: only ``PATH``, ``LANG``, ``HOME``, ``TMPDIR``; nothing of the
  parent's environment (secrets included) is inherited; stdin is ``/dev/null``;
- **output** — stdout and stderr are read incrementally and only the first
  ``max_output_bytes`` of each are kept; the rest is counted and dropped.

What is NOT isolated: the filesystem is the host's (world-readable files such as ``/etc/passwd``
or the Python stdlib are visible; ``/tmp`` is writable by ``nobody``), there is no seccomp
filter, and the kernel is shared. This is a sandbox against accidents and runaway model code,
not against a determined kernel exploit. Processes left running after the main one exits are
killed.

Degradation: each mechanism needs root and the host's support. When one is unavailable (not
root, no cgroup v1 controllers, ``unshare`` refused, the interpreter not executable by
``nobody``), ``containment="best_effort"`` (the default) runs without it, logs a warning once,
and every result carries a ``sandbox degraded: ...`` note; ``containment="require"`` refuses to
run with :class:`~tepo_agent.errors.SandboxError`.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tepo_agent.errors import ConfigError, SandboxError
from tepo_agent.tools._cgroup import RunCgroups

logger = logging.getLogger(__name__)

_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_WORKDIR_PREFIX = "tepo-sandbox-"
_SNIPPET = "snippet.py"

# Runs inside the sandbox: executes snippet.py and, like a REPL, prints the value of a final
# bare expression; tracebacks start at the snippet, not at this runner.
_RUNNER = """\
import ast, sys, traceback
src = open("snippet.py", encoding="utf-8").read()
try:
    tree = ast.parse(src, "snippet.py")
except SyntaxError:
    traceback.print_exc(limit=0)
    sys.exit(1)
last = None
if tree.body and isinstance(tree.body[-1], ast.Expr):
    last = ast.Expression(tree.body.pop().value)
ns = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(tree, "snippet.py", "exec"), ns)
    if last is not None:
        value = eval(compile(last, "snippet.py", "eval"), ns)
        if value is not None:
            print(repr(value))
except SystemExit:
    raise
except BaseException as exc:
    traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
    sys.exit(1)
"""


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run."""

    timeout_s: float = 10.0
    """Wall-clock limit; at expiry every process of the run is killed."""
    cpu_time_s: int = 10
    """``RLIMIT_CPU`` per process, in CPU seconds (SIGXCPU, then SIGKILL one second later)."""
    memory_bytes: int = 512 * 1024**2
    """Memory cgroup limit for the whole run and ``RLIMIT_AS`` for each process."""
    max_processes: int = 32
    """``pids.max`` of the run's cgroup (or, without cgroups, the user's ``RLIMIT_NPROC``)."""
    max_output_bytes: int = 16_384
    """Bytes of stdout, and separately of stderr, kept; the rest is counted and dropped."""
    max_file_bytes: int = 16 * 1024**2
    """``RLIMIT_FSIZE``: the largest file the code may write."""
    max_open_files: int = 64
    """``RLIMIT_NOFILE``."""
    max_code_chars: int = 100_000
    """Longest source accepted."""
    user: str | None = "nobody"
    """Unprivileged user to run as (needs root); ``None`` keeps the caller's user."""
    isolate_network: bool = True
    """Run in a new, empty network namespace (needs root)."""
    containment: Literal["best_effort", "require"] = "best_effort"
    """``best_effort``: run without an unavailable mechanism and say so in every result;
    ``require``: refuse to run (SandboxError) unless cgroups, user and network are contained."""
    python_executable: str | None = None
    """Interpreter to run; ``None`` picks ``sys.executable`` or, if the sandbox user cannot
    execute it, ``/usr/bin/python3`` / ``/usr/local/bin/python3``."""

    def __post_init__(self) -> None:
        positive = {
            "timeout_s": self.timeout_s,
            "cpu_time_s": self.cpu_time_s,
            "memory_bytes": self.memory_bytes,
            "max_processes": self.max_processes,
            "max_output_bytes": self.max_output_bytes,
            "max_file_bytes": self.max_file_bytes,
            "max_open_files": self.max_open_files,
            "max_code_chars": self.max_code_chars,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"SandboxConfig.{name} must be positive, got {value!r}")
        if self.memory_bytes < 64 * 1024**2:
            raise ConfigError(
                f"SandboxConfig.memory_bytes={self.memory_bytes} is below 64 MiB, too little "
                "for the Python interpreter to start; raise it"
            )
        if self.max_open_files < 16:
            raise ConfigError("SandboxConfig.max_open_files must be at least 16 for Python")
        if self.containment not in ("best_effort", "require"):
            raise ConfigError(
                f"SandboxConfig.containment must be 'best_effort' or 'require', "
                f"got {self.containment!r}"
            )
        if self.user is not None:
            try:
                pwd.getpwnam(self.user)
            except KeyError:
                raise ConfigError(
                    f"SandboxConfig.user={self.user!r} does not exist; use an existing "
                    "unprivileged user such as 'nobody', or None"
                ) from None


@dataclass(frozen=True)
class Containment:
    """Which isolation mechanisms a :class:`PythonSandbox` actually uses on this host."""

    cgroups: bool
    """Per-run pids and memory cgroups can be created."""
    user: str | None
    """The unprivileged user the code runs as, or ``None`` when it runs as the caller."""
    network_namespace: bool
    """The code runs in an empty network namespace."""
    python_executable: str
    """The interpreter used."""
    notes: tuple[str, ...]
    """Why each missing mechanism is missing."""

    @property
    def process_limit_enforced(self) -> bool:
        """A fork bomb is contained (pids cgroup, or RLIMIT_NPROC of a non-root user)."""
        return self.cgroups or self.user is not None

    @property
    def complete(self) -> bool:
        return self.cgroups and self.user is not None and self.network_namespace

    def describe(self) -> str:
        if self.complete:
            return f"contained: pids+memory cgroups, user {self.user}, no network"
        return "sandbox degraded: " + "; ".join(self.notes)


@dataclass(frozen=True)
class SandboxResult:
    """What one run produced."""

    stdout: str
    stderr: str
    exit_code: int | None
    """The process's exit status; negative for a signal; ``None`` when killed at the timeout."""
    timed_out: bool
    memory_exceeded: bool
    cpu_exceeded: bool
    stdout_bytes: int
    """Bytes the code wrote to stdout in total (``len(stdout)`` may be smaller: capped)."""
    stderr_bytes: int
    duration_s: float
    notes: tuple[str, ...]
    """Truncation and degraded-containment notes, for the model and the log."""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


def _unshare_net(libc: ctypes.CDLL) -> None:
    if libc.unshare(_CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")


def _drop_user(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _probe(argv: list[str], preexec: Callable[[], None]) -> str | None:
    """Run a tiny command with ``preexec``; ``None`` on success, else the reason."""
    try:
        completed = subprocess.run(
            argv, preexec_fn=preexec, capture_output=True, timeout=30, env={}, cwd="/"
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    if completed.returncode != 0:
        return completed.stderr.decode(errors="replace").strip()[-200:] or "non-zero exit"
    return None


class PythonSandbox:
    """Runs Python source under :class:`SandboxConfig` limits; see the module docstring."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.containment = self._probe_containment()
        if not self.containment.complete:
            if self.config.containment == "require":
                raise SandboxError(
                    f"{self.containment.describe()}. Run as root on a host with cgroup v1 pids "
                    "and memory controllers and network namespaces, or set "
                    "SandboxConfig(containment='best_effort') to accept weaker isolation"
                )
            logger.warning("python sandbox: %s", self.containment.describe())

    def _probe_containment(self) -> Containment:
        notes: list[str] = []
        is_root = os.geteuid() == 0
        netns = False
        if self.config.isolate_network:
            if not is_root:
                notes.append("no network namespace (needs root)")
            elif (why := _probe(["/bin/true"], lambda: _unshare_net(self._libc))) is not None:
                notes.append(f"no network namespace ({why})")
            else:
                netns = True
        else:
            notes.append("network isolation disabled by config")
        cgroups_ok = False
        for note in RunCgroups.reap_stale():
            logger.warning("python sandbox: %s", note)
        _remove_stale_workdirs()
        if not is_root:
            notes.append("no cgroups (needs root)")
        else:
            probe, cg_notes = RunCgroups.create(self.config.max_processes, self.config.memory_bytes)
            cgroups_ok = probe.pids is not None and probe.memory is not None
            cg_notes += probe.remove()
            if not cgroups_ok:
                notes.append("no pids/memory cgroups (" + "; ".join(cg_notes) + ")")
        user, python = self._pick_user_and_python(is_root, notes)
        return Containment(cgroups_ok, user, netns, python, tuple(notes))

    def _pick_user_and_python(self, is_root: bool, notes: list[str]) -> tuple[str | None, str]:
        explicit = self.config.python_executable
        candidates = [explicit] if explicit else [sys.executable]
        if not explicit:
            candidates += [
                p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)
            ]
        if self.config.user is None:
            notes.append("runs as the calling user (SandboxConfig.user=None)")
            return None, candidates[0]
        if not is_root:
            notes.append(f"cannot switch to user {self.config.user!r} (needs root)")
            return None, candidates[0]
        entry = pwd.getpwnam(self.config.user)
        reasons = []
        for python in candidates:
            why = _probe(
                [python, "-I", "-c", "pass"], lambda: _drop_user(entry.pw_uid, entry.pw_gid)
            )
            if why is None:
                return self.config.user, python
            reasons.append(f"{python}: {why}")
        notes.append(
            f"runs as root: user {self.config.user!r} cannot run any interpreter ("
            + "; ".join(reasons)
            + ")"
        )
        return None, candidates[0]

    def _preexec(self, cgroups: RunCgroups) -> Callable[[], None]:
        config, containment, libc = self.config, self.containment, self._libc
        ids = None
        if containment.user is not None:
            entry = pwd.getpwnam(containment.user)
            ids = (entry.pw_uid, entry.pw_gid)

        parent = os.getpid()

        def preexec() -> None:  # runs in the child between fork and exec
            cgroups.join()
            if containment.network_namespace:
                _unshare_net(libc)
            cpu = config.cpu_time_s
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_AS, (config.memory_bytes, config.memory_bytes))
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (config.max_file_bytes, config.max_file_bytes)
            )
            files = config.max_open_files
            resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            if ids is not None:
                if not containment.cgroups:
                    # RLIMIT_NPROC counts every process of the user, across runs and until
                    # the dead are reaped; with a per-run pids cgroup it only adds noise.
                    procs = config.max_processes
                    resource.setrlimit(resource.RLIMIT_NPROC, (procs, procs))
                _drop_user(*ids)
            # Set last: a credential change clears it. If the runtime dies mid-run, the kernel
            # kills the main process; anything it forked stays in the cgroup until the next
            # PythonSandbox reaps stale groups.
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0 or os.getppid() != parent:
                os._exit(125)

        return preexec

    def run(self, code: str) -> SandboxResult:
        """Run ``code``; the last bare expression's value is printed, as in a REPL."""
        config = self.config
        if len(code) > config.max_code_chars:
            raise SandboxError(
                f"code is {len(code)} characters; the limit is {config.max_code_chars}"
            )
        notes: list[str] = [] if self.containment.complete else [self.containment.describe()]
        workdir = tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-")
        try:
            with open(os.path.join(workdir, _SNIPPET), "w", encoding="utf-8") as handle:
                handle.write(code)
            if self.containment.user is not None:
                entry = pwd.getpwnam(self.containment.user)
                os.chown(workdir, entry.pw_uid, entry.pw_gid)
                os.chown(os.path.join(workdir, _SNIPPET), entry.pw_uid, entry.pw_gid)
            os.chmod(workdir, 0o700)
            if self.containment.cgroups:
                cgroups, cg_notes = RunCgroups.create(config.max_processes, config.memory_bytes)
                if cg_notes and config.containment == "require":
                    cgroups.remove()
                    raise SandboxError("cannot create the run's cgroups: " + "; ".join(cg_notes))
                notes += cg_notes
            else:
                cgroups = RunCgroups(None, None, None)
            try:
                return self._run_in(workdir, cgroups, notes)
            finally:
                notes_after = cgroups.remove()
                if notes_after:
                    logger.warning("python sandbox cleanup: %s", "; ".join(notes_after))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_in(self, workdir: str, cgroups: RunCgroups, notes: list[str]) -> SandboxResult:
        config = self.config
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env |= {"HOME": workdir, "TMPDIR": workdir}
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                [self.containment.python_executable, "-I", "-c", _RUNNER],
                cwd=workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=self._preexec(cgroups),
                close_fds=True,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise SandboxError(f"cannot start the sandboxed interpreter: {exc}") from exc
        assert proc.stdout is not None and proc.stderr is not None
        kept = {"stdout": bytearray(), "stderr": bytearray()}
        total = {"stdout": 0, "stderr": 0}
        timed_out, reaped_leftovers = False, False
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, "stdout")
            selector.register(proc.stderr, selectors.EVENT_READ, "stderr")
            deadline = start + config.timeout_s
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in selector.select(min(remaining, 0.1)):
                    chunk = os.read(key.fd, 65_536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    name = key.data
                    total[name] += len(chunk)
                    room = config.max_output_bytes - len(kept[name])
                    if room > 0:
                        kept[name] += chunk[:room]
                if not reaped_leftovers and _exited(proc.pid):
                    # Background processes the code left behind would hold the pipes open.
                    reaped_leftovers = True
                    self._kill(proc.pid, cgroups)
        self._kill(proc.pid, cgroups)
        exit_code = proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        duration = time.monotonic() - start
        stderr_text = kept["stderr"].decode("utf-8", errors="replace")
        memory_exceeded = cgroups.oom_killed() or "MemoryError" in stderr_text[-2000:]
        cpu_exceeded = exit_code in (-signal.SIGXCPU, -signal.SIGKILL) and not timed_out
        for name in ("stdout", "stderr"):
            if total[name] > len(kept[name]):
                notes.append(
                    f"{name} truncated: kept the first {len(kept[name])} of {total[name]} bytes"
                )
        return SandboxResult(
            stdout=kept["stdout"].decode("utf-8", errors="replace"),
            stderr=stderr_text,
            exit_code=None if timed_out else exit_code,
            timed_out=timed_out,
            memory_exceeded=memory_exceeded,
            cpu_exceeded=cpu_exceeded and not memory_exceeded,
            stdout_bytes=total["stdout"],
            stderr_bytes=total["stderr"],
            duration_s=duration,
            notes=tuple(notes),
        )

    @staticmethod
    def _kill(pid: int, cgroups: RunCgroups) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        cgroups.kill_all()


def _remove_stale_workdirs() -> None:
    """Remove working directories left by runtimes that died mid-run."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*-*"):
        owner = path.name.removeprefix(_WORKDIR_PREFIX).split("-", 1)[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            shutil.rmtree(path, ignore_errors=True)


def _exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (its pid and group id stay reserved)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


__all__ = ["Containment", "PythonSandbox", "SandboxConfig", "SandboxResult"]
