"""The python sandbox's private filesystem, process tree and IPC, through bubblewrap (``bwrap``).

Each run's interpreter is started by ``bwrap`` (Debian's ``bubblewrap`` package) with new user,
mount, pid, IPC, UTS and (where the kernel allows) cgroup namespaces. What the code sees:

- ``/usr`` (and the ``/bin``, ``/lib*``, ``/sbin`` links or directories beside it) read-only,
  plus the interpreter's own prefix when it lives elsewhere, read-only;
- its working directory: a fresh tmpfs of ``disk_bytes`` at the same path as on the host
  (``HOME`` and ``TMPDIR``), holding a read-only copy of the snippet;
- a fresh ``/tmp`` and ``/dev/shm``, tmpfs of ``disk_bytes`` each; a minimal ``/dev`` (null,
  zero, full, random, urandom, tty, pts); a ``/proc`` of its own pid namespace.

Nothing else of the host exists there: no ``/etc`` (so no ``/etc/shadow``), no ``/home``,
``/root``, ``/work``, ``/var`` or ``/run`` (so no database file, no other run's directory, no
unix socket of a host service such as ``/run/postgresql``), no host ``/tmp``. The code runs as
the sandbox user mapped to itself (``nobody`` outside is ``nobody`` inside), with every
capability dropped (``--cap-drop ALL``), in its own session (``--new-session``: no terminal to
type into). In its pid namespace the interpreter is pid 2 under bubblewrap's reaper: it cannot
see, signal or trace any host process, and when it exits the kernel kills everything left in
the namespace (double-forked daemons included). ``--die-with-parent`` ends the run when the
runtime dies.

bubblewrap runs unprivileged here (the caller has already switched to the sandbox user), through
user namespaces; :func:`find_bwrap` returns None when it is not installed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

_SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def find_bwrap() -> str | None:
    """The ``bwrap`` executable, or None (install Debian's ``bubblewrap``)."""
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin")


def _system_binds(python: str) -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for name in _SYSTEM_DIRS:
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    real = Path(os.path.realpath(python))
    prefix = real.parent.parent  # <prefix>/bin/python3.X
    if not real.is_relative_to("/usr") and str(prefix) != "/":
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def bwrap_argv(
    bwrap: str,
    *,
    python: str,
    workdir: str,
    snippet: str,
    disk_bytes: int,
    seccomp_fd: int | None,
) -> list[str]:
    """The ``bwrap`` command line before the interpreter's own ``argv``.

    ``workdir`` is the run's host directory (mounted as a fresh tmpfs at the same path) and
    ``snippet`` the file in it that is made visible there, read-only.
    """
    size = str(disk_bytes)
    argv = [
        bwrap,
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        *_system_binds(python),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        size,
        "--tmpfs",
        "/dev/shm",
        "--size",
        size,
        "--tmpfs",
        "/tmp",
        "--size",
        size,
        "--tmpfs",
        workdir,
        "--ro-bind",
        os.path.join(workdir, snippet),
        os.path.join(workdir, snippet),
        "--remount-ro",
        "/",  # the root bubblewrap built is a tmpfs of no fixed size: nothing is written there
        "--chdir",
        workdir,
    ]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    return argv


def exit_status(code: int) -> int:
    """The interpreter's status from bwrap's: bwrap exits 128+N when its child died of signal N.

    Returned as ``-N`` like :class:`subprocess.Popen` does for a direct child (a snippet that
    calls ``sys.exit(137)`` therefore reads as killed by SIGKILL; exit codes above 128 are
    ambiguous through bwrap).
    """
    return -(code - 128) if 128 < code < 128 + 65 else code


__all__ = ["bwrap_argv", "exit_status", "find_bwrap"]
