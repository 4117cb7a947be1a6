"""A free TCP port, for servers this process starts (vLLM launcher, tests, examples, benchmarks).

The port is free when this returns; another process may still take it before the server binds
it, so a caller that can hand a bound socket to its server (uvicorn's ``sockets=``) should.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on now (chosen by the kernel)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


__all__ = ["free_port"]
