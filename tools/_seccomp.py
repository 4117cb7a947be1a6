"""The python sandbox's seccomp filter: system calls the sandboxed code never needs, refused.

The filter allows everything by default and answers ``EPERM`` to the calls that reach across the
sandbox's walls or widen the kernel surface: debugging other processes (``ptrace``,
``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``), new namespaces and mounts
(``unshare``, ``setns``, ``mount`` and friends, ``clone``/``clone3`` with namespace flags),
kernel keyrings, BPF and perf, ``userfaultfd``, ``io_uring``, module loading, ``kexec``,
``reboot``, swap, accounting and quotas, and ``TIOCSTI`` (typing into a terminal). Bubblewrap
installs the compiled filter (``--seccomp FD``) just before it runs the interpreter, so the
filter holds for the interpreter and everything it starts; bubblewrap's own setup is not
filtered.

The filter is built with libseccomp through ``pyseccomp`` (ctypes over ``libseccomp.so.2``).
:func:`compile_filter` returns ``None`` with the reason when either is missing.
"""

from __future__ import annotations

import errno
import tempfile

DENIED_SYSCALLS = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    "mount_setattr",
    "add_key",
    "request_key",
    "keyctl",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "syslog",
    "personality",
)
"""Refused with EPERM whatever their arguments."""

_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
    0x00000080,  # CLONE_NEWTIME
)
_TIOCSTI = 0x5412


def compile_filter() -> tuple[bytes | None, str | None]:
    """The filter as a BPF program for ``bwrap --seccomp``, or ``(None, why it is missing)``."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError) as exc:  # the package, or libseccomp.so.2 it loads
        return None, f"no seccomp filter (pyseccomp/libseccomp unavailable: {exc})"
    try:
        rules = seccomp.SyscallFilter(seccomp.ALLOW)
        deny = seccomp.ERRNO(errno.EPERM)
        for name in DENIED_SYSCALLS:
            try:
                rules.add_rule(deny, name)
            except (ValueError, RuntimeError, OSError):
                continue  # a call this kernel/architecture does not have
        for flag in _NAMESPACE_FLAGS:  # one rule per flag: rules OR, conditions of one AND
            rules.add_rule(deny, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        rules.add_rule(deny, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, 0xFFFFFFFF, _TIOCSTI))
        # clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes glibc and
        # Python fall back to clone, whose flags the rule above checks.
        rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        with tempfile.TemporaryFile() as handle:
            rules.export_bpf(handle)
            handle.seek(0)
            return handle.read(), None
    except (ValueError, RuntimeError, OSError) as exc:
        return None, f"no seccomp filter (libseccomp refused it: {exc})"


__all__ = ["DENIED_SYSCALLS", "compile_filter"]
