"""The python sandbox's settings and reports: :class:`SandboxConfig` (limits of a run),
:class:`Containment` (which isolation mechanisms a sandbox uses on this host) and
:class:`SandboxResult` (what one run produced). The engine is :mod:`tepo_agent.tools.sandbox`."""

from __future__ import annotations

import pwd
from dataclasses import dataclass
from typing import Literal

from tepo_agent.errors import ConfigError


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
    isolate_filesystem: bool = True
    """Run under bubblewrap (:mod:`tepo_agent.tools._bwrap`): private mount, pid and IPC
    namespaces, only ``/usr`` of the host visible (read-only), no capabilities, and the seccomp
    filter of :mod:`tepo_agent.tools._seccomp`. Needs Debian's ``bubblewrap``."""
    max_disk_bytes: int = 64 * 1024**2
    """Size of each private tmpfs (the working directory, ``/tmp``, ``/dev/shm``); their pages
    count against the memory limit too."""
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
            "max_disk_bytes": self.max_disk_bytes,
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
    filesystem: bool = False
    """The code runs under bubblewrap: private mount, pid and IPC namespaces, no capabilities."""
    seccomp: bool = False
    """bubblewrap installs the seccomp filter (ptrace, namespaces, mounts, keyrings... refused)."""

    @property
    def process_limit_enforced(self) -> bool:
        """A fork bomb is contained (pids cgroup, or RLIMIT_NPROC of a non-root user)."""
        return self.cgroups or self.user is not None

    @property
    def complete(self) -> bool:
        return (
            self.cgroups
            and self.user is not None
            and self.network_namespace
            and self.filesystem
            and self.seccomp
        )

    def describe(self) -> str:
        if self.complete:
            return (
                f"contained: pids+memory cgroups, user {self.user}, no network, private "
                "filesystem and pids (bubblewrap), seccomp"
            )
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


__all__ = ["Containment", "SandboxConfig", "SandboxResult"]
