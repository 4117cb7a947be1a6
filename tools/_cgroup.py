"""Per-run cgroup v1 groups for the python sandbox: create, limit, join, kill everything, remove.

One :class:`RunCgroups` covers the ``pids``, ``memory`` and (when mounted) ``freezer``
hierarchies. Each group is created as a child of the cgroup this process already lives in, so
the limits nest under whatever limits the host set. The sandboxed child joins the groups itself
(``join`` runs in ``preexec_fn``, between fork and exec), so no process of the run is ever
outside them. ``kill_all`` freezes the group first (when the freezer is there), so a fork bomb
cannot spawn new processes between the listing and the SIGKILL.

Only cgroup v1 is handled (that is what the machines here mount); on a host without it,
:meth:`RunCgroups.create` reports why and the sandbox degrades.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

_PREFIX = "tepo-sandbox-"


def _controller_paths() -> dict[str, Path]:
    """Map each mounted v1 controller to the directory of *this* process's cgroup in it."""
    mounts: dict[str, Path] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            pre, _, post = line.partition(" - ")
            fields, post_fields = pre.split(), post.split()
            if len(post_fields) < 3 or post_fields[0] != "cgroup":
                continue
            for option in post_fields[2].split(","):
                if option in ("pids", "memory", "freezer"):
                    mounts[option] = Path(fields[4])
    current: dict[str, str] = {}
    with open("/proc/self/cgroup", encoding="utf-8") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(","):
                current[controller] = path
    return {
        name: mount / current.get(name, "/").lstrip("/")
        for name, mount in mounts.items()
        if (mount / current.get(name, "/").lstrip("/")).is_dir()
    }


@dataclass
class RunCgroups:
    """The cgroup directories of one sandbox run (any of them may be ``None``)."""

    pids: Path | None
    memory: Path | None
    freezer: Path | None

    @classmethod
    def create(cls, max_processes: int, memory_bytes: int) -> tuple[RunCgroups, list[str]]:
        """Create the groups and set their limits; returns them and notes on what failed."""
        notes: list[str] = []
        try:
            parents = _controller_paths()
        except OSError as exc:
            return cls(None, None, None), [f"cannot read cgroup mounts ({exc})"]
        name = f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
        made: dict[str, Path | None] = {}
        limits = {
            "pids": {"pids.max": str(max_processes)},
            "memory": {"memory.limit_in_bytes": str(memory_bytes)},
            "freezer": {},
        }
        for controller, files in limits.items():
            parent = parents.get(controller)
            if parent is None:
                notes.append(f"the cgroup v1 '{controller}' controller is not mounted")
                made[controller] = None
                continue
            path = parent / name
            try:
                path.mkdir()
                for filename, value in files.items():
                    (path / filename).write_text(value)
                # Without swap accounting memsw is absent; where present, cap swap as well.
                if controller == "memory" and (path / "memory.memsw.limit_in_bytes").exists():
                    with contextlib.suppress(OSError):
                        (path / "memory.memsw.limit_in_bytes").write_text(str(memory_bytes))
            except OSError as exc:
                notes.append(f"cannot create the '{controller}' cgroup at {path} ({exc})")
                with contextlib.suppress(OSError):
                    path.rmdir()
                made[controller] = None
                continue
            made[controller] = path
        return cls(made["pids"], made["memory"], made["freezer"]), notes

    @classmethod
    def reap_stale(cls) -> list[str]:
        """Kill and remove the groups of runtimes that died mid-run; returns what was reaped."""
        try:
            parents = _controller_paths()
        except OSError:
            return []
        stale: dict[str, dict[str, Path]] = {}
        for controller, parent in parents.items():
            for path in parent.glob(f"{_PREFIX}*"):
                owner = path.name.removeprefix(_PREFIX).split("-", 1)[0]
                if owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    stale.setdefault(path.name, {})[controller] = path
        notes = []
        for name, paths in stale.items():
            group = cls(paths.get("pids"), paths.get("memory"), paths.get("freezer"))
            killed = group.members()
            problems = group.remove()
            notes.append(f"reaped stale cgroup {name} (killed {len(killed)} processes)")
            notes += problems
        return notes

    def _paths(self) -> list[Path]:
        return [p for p in (self.pids, self.memory, self.freezer) if p is not None]

    def join(self) -> None:
        """Move the calling process into every group (called in the child before exec)."""
        pid = str(os.getpid())
        for path in self._paths():
            with open(path / "cgroup.procs", "w", encoding="ascii") as handle:
                handle.write(pid)

    def members(self) -> list[int]:
        """Process ids still in the run (from the pids group, else memory, else freezer)."""
        for path in self._paths():
            try:
                text = (path / "cgroup.procs").read_text()
            except OSError:
                continue
            return [int(line) for line in text.split()]
        return []

    def oom_killed(self) -> bool:
        """True when the memory group hit its limit and the kernel killed a process."""
        if self.memory is None:
            return False
        try:
            for line in (self.memory / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill" and int(value) > 0:
                    return True
            return int((self.memory / "memory.failcnt").read_text()) > 0
        except (OSError, ValueError):
            return False

    def _set_frozen(self, frozen: bool) -> None:
        if self.freezer is None:
            return
        state = "FROZEN" if frozen else "THAWED"
        with contextlib.suppress(OSError):
            (self.freezer / "freezer.state").write_text(state)
            deadline = time.monotonic() + 1.0
            while frozen and time.monotonic() < deadline:
                if (self.freezer / "freezer.state").read_text().strip() == "FROZEN":
                    break
                time.sleep(0.005)

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the run; True once the groups are empty."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._set_frozen(True)
            members = self.members()
            for pid in members:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            # Killed processes only die once thawed.
            self._set_frozen(False)
            if not members:
                return True
            time.sleep(0.01)
        return not self.members()

    def remove(self) -> list[str]:
        """Kill what is left and remove the directories; returns notes on failures."""
        notes: list[str] = []
        if not self.kill_all():
            notes.append(f"processes {self.members()} survived the kill")
        for path in self._paths():
            for _ in range(100):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)
            else:
                notes.append(f"cannot remove cgroup {path}")
        return notes
