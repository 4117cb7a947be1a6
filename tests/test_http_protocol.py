"""The HTTP protocol `tepo-agent serve` runs uvicorn with: httptools with h11's 16 KiB bound on
a request head, h11 without httptools; on a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from tepo_agent.server.http_protocol import MAX_HEAD_BYTES, http_protocol


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the body's length, then three chunks of a streamed body one after another."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": f"{size}\n".encode(), "more_body": True})
    for chunk in (b"a\n", b"b\n"):
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        echo, log_level="error", lifespan="off", http=http_protocol(), loop="auto"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join()
    sock.close()


def test_httptools_is_chosen_when_installed() -> None:
    pytest.importorskip("httptools")
    protocol = http_protocol()
    assert not isinstance(protocol, str)
    assert protocol.__name__ == "BoundedHttpToolsProtocol"


def test_h11_is_chosen_without_httptools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httptools", None)  # as if it were not installed
    assert http_protocol() == "h11"


def test_requests_bodies_and_streams_pass(url: str) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        # bodies larger than the head bound, on one keep-alive connection: they are not a head
        for _ in range(3):
            answer = client.post("/", content=b"x" * (4 * MAX_HEAD_BYTES))
            assert answer.status_code == 200 and answer.text == f"{4 * MAX_HEAD_BYTES}\na\nb\n"
        # a head just under the bound passes
        big = {"x-big": "y" * (MAX_HEAD_BYTES - 1024)}
        assert client.get("/", headers=big).status_code == 200
        with client.stream("GET", "/") as streamed:
            assert list(streamed.iter_lines()) == ["0", "a", "b"]


def test_a_head_over_16_kib_is_refused_with_431_and_the_connection_closed(url: str) -> None:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n")
        sent = 0
        try:  # headers that never end: the server must stop them, not buffer them
            while sent < 64 * MAX_HEAD_BYTES:
                sock.sendall(b"x-pad: " + b"z" * 1000 + b"\r\n")
                sent += 1009
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert sent < 64 * MAX_HEAD_BYTES or answer, "the server kept reading headers"
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
