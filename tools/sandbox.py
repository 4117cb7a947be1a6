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
  so every connection, loopback and IPv6 included, fails, and abstract unix sockets of the host
  are out of reach;
- **filesystem, processes, IPC** — bubblewrap (:mod:`tepo_agent.tools._bwrap`): private mount,
  pid, IPC and UTS namespaces; only ``/usr`` of the host, read-only; the working directory,
  ``/tmp`` and ``/dev/shm`` are private tmpfs of ``max_disk_bytes`` each; no capabilities; the
  code cannot see, signal or trace a host process, and whatever it left running dies with it;
- **system calls** — a seccomp filter (:mod:`tepo_agent.tools._seccomp`) refuses ptrace,
  new namespaces, mounts, keyrings, BPF, perf, userfaultfd, io_uring, module loading...;
- **time** — a wall-clock timeout, after which every process of the run is SIGKILLed (the whole
  cgroup, frozen first, and the process group), and ``RLIMIT_CPU`` per process;
- **files** — ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no core dumps; the host working directory
  (the snippet only) is removed afterwards;
- **a dying runtime** — ``PR_SET_PDEATHSIG=SIGKILL`` and bubblewrap's ``--die-with-parent``; the
  cgroups and working directories a killed runtime leaves are reaped when the next sandbox is
  created;
- **environment** — a clean one: only ``PATH``, ``LANG``, ``HOME``, ``TMPDIR`` (and ``PWD``);
  nothing of the parent's environment (secrets included) is inherited; stdin is ``/dev/null``;
- **output** — stdout and stderr are read incrementally and only the first
  ``max_output_bytes`` of each are kept; the rest is counted and dropped.

What is NOT isolated: the kernel is shared (a kernel exploit through an allowed system call
escapes), the code sees the host's ``/usr`` (read-only) and its CPU model, and timing side
channels are open. RELIABILITY.md lists every hostile case tried and how it is held.

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
from pathlib import Path

from tepo_agent.errors import SandboxError
from tepo_agent.tools._bwrap import bwrap_argv, exit_status, find_bwrap
from tepo_agent.tools._cgroup import RunCgroups
from tepo_agent.tools._sandbox_types import Containment, SandboxConfig, SandboxResult
from tepo_agent.tools._seccomp import compile_filter

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


def _unshare_net(libc: ctypes.CDLL) -> None:
    if libc.unshare(_CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare(CLONE_NEWNET) failed: {os.strerror(errno)}")


def _drop_user(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def _probe(
    argv: list[str], preexec: Callable[[], None], pass_fds: tuple[int, ...] = ()
) -> str | None:
    """Run a tiny command with ``preexec``; ``None`` on success, else the reason."""
    try:
        completed = subprocess.run(
            argv,
            preexec_fn=preexec,
            capture_output=True,
            timeout=30,
            env={},
            cwd="/",
            pass_fds=pass_fds,
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
        self._bwrap: str | None = None
        self._seccomp_program: bytes | None = None
        self.containment = self._probe_containment()
        if not self.containment.complete:
            if self.config.containment == "require":
                raise SandboxError(
                    f"{self.containment.describe()}. Run as root on a host with cgroup v1 pids "
                    "and memory controllers, network namespaces and bubblewrap, or set "
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
        filesystem, seccomp = self._probe_bwrap(user, python, notes)
        return Containment(cgroups_ok, user, netns, python, tuple(notes), filesystem, seccomp)

    def _probe_bwrap(self, user: str | None, python: str, notes: list[str]) -> tuple[bool, bool]:
        """Whether bubblewrap (and the seccomp filter) can start the interpreter as ``user``."""
        if not self.config.isolate_filesystem:
            notes.append("filesystem isolation disabled by config (no bubblewrap, no seccomp)")
            return False, False
        bwrap = find_bwrap()
        if bwrap is None:
            notes.append(
                "no private filesystem, pid namespace or seccomp (bubblewrap is not installed: "
                "apt-get install bubblewrap)"
            )
            return False, False
        program, why_not = compile_filter()
        self._bwrap, self._seccomp_program = bwrap, program
        workdir = _make_workdir("pass\n", user)
        try:
            argv, fds = self._argv(workdir, python, filesystem=True)
            preexec = _drop_user_preexec(user)
            try:
                failure = _probe(argv, preexec, fds)
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if failure is not None:
            notes.append(f"no private filesystem, pid namespace or seccomp (bwrap: {failure})")
            return False, False
        if why_not is not None:
            notes.append(why_not)
        return True, program is not None

    def _argv(
        self, workdir: str, python: str, *, filesystem: bool
    ) -> tuple[list[str], tuple[int, ...]]:
        """The command of a run (bwrap's prefix when ``filesystem``) and the fds it inherits."""
        command = [python, "-I", "-c", _RUNNER]
        if not filesystem or self._bwrap is None:
            return command, ()
        fd = _seccomp_pipe(self._seccomp_program) if self._seccomp_program else None
        prefix = bwrap_argv(
            self._bwrap,
            python=python,
            workdir=workdir,
            snippet=_SNIPPET,
            disk_bytes=self.config.max_disk_bytes,
            seccomp_fd=fd,
        )
        return prefix + command, (() if fd is None else (fd,))

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
        workdir = _make_workdir(code, self.containment.user)
        try:
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

    def _start(self, workdir: str, cgroups: RunCgroups) -> subprocess.Popen[bytes]:
        """Start the run's interpreter (under bubblewrap when the containment has it)."""
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        env |= {"HOME": workdir, "TMPDIR": workdir}
        containment = self.containment
        argv, fds = self._argv(
            workdir, containment.python_executable, filesystem=containment.filesystem
        )
        try:
            return subprocess.Popen(
                argv,
                pass_fds=fds,
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
        finally:
            for fd in fds:
                os.close(fd)

    def _run_in(self, workdir: str, cgroups: RunCgroups, notes: list[str]) -> SandboxResult:
        config, containment = self.config, self.containment
        start = time.monotonic()
        proc = self._start(workdir, cgroups)
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
        if containment.filesystem:
            exit_code = exit_status(exit_code)
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


def _make_workdir(code: str, user: str | None) -> str:
    """A fresh host directory holding ``code`` as the snippet, owned by ``user``, mode 0700."""
    workdir = tempfile.mkdtemp(prefix=f"{_WORKDIR_PREFIX}{os.getpid()}-")
    with open(os.path.join(workdir, _SNIPPET), "w", encoding="utf-8") as handle:
        handle.write(code)
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(workdir, entry.pw_uid, entry.pw_gid)
        os.chown(os.path.join(workdir, _SNIPPET), entry.pw_uid, entry.pw_gid)
    os.chmod(workdir, 0o700)
    return workdir


def _drop_user_preexec(user: str | None) -> Callable[[], None]:
    """A ``preexec_fn`` that switches to ``user`` (does nothing for None)."""
    if user is None:
        return lambda: None
    entry = pwd.getpwnam(user)
    return lambda: _drop_user(entry.pw_uid, entry.pw_gid)


def _seccomp_pipe(program: bytes) -> int:
    """The read end of a pipe holding the BPF program; bwrap reads it to the end."""
    read, write = os.pipe()
    try:
        os.write(write, program)  # a few hundred bytes: far below the pipe's buffer
    finally:
        os.close(write)
    return read


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
