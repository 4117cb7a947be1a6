"""The HTTP/1.1 protocol `tepo-agent serve` runs uvicorn with.

uvicorn parses requests with ``httptools`` (llhttp, in C) when it is installed, else with the
pure-Python ``h11``; a request's parsing, routing and socket work is a per-request cost the batch
does not share, and with ``httptools`` (and the ``uvloop`` event loop) it takes about a third
less CPU (benchmarks/RESULTS.md, issue 15). ``h11`` refuses a request head (request line and
headers) over 16 KiB; uvicorn's ``httptools`` protocol buffers any amount. :func:`http_protocol`
gives uvicorn's ``httptools`` protocol with the same bound (:class:`BoundedHttpToolsProtocol`:
431 and the connection closed), or ``"h11"`` when ``httptools`` is not installed.

Example::

    uvicorn.run(app, http=http_protocol(), loop="auto")   # uvloop when installed
"""

from __future__ import annotations

import asyncio

MAX_HEAD_BYTES = 16 * 1024  # h11's bound on an incomplete request head (uvicorn's default)

_REFUSAL = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: 39\r\n"
    b"connection: close\r\n"
    b"\r\n"
    b"Request line and headers over 16 KiB.\r\n"
)


def http_protocol() -> type[asyncio.Protocol] | str:
    """The ``http=`` argument for uvicorn: the bounded ``httptools`` protocol, or ``"h11"``."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    return _bounded_httptools()


def _bounded_httptools() -> type[asyncio.Protocol]:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's ``httptools`` protocol that refuses a request head over
        :data:`MAX_HEAD_BYTES` with 431, as ``h11`` does (it answers 400)."""

        _head_bytes = 0  # bytes received since the last request's headers were complete
        _in_head = True

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                self._head_bytes += len(data)
            super().data_received(data)
            if (
                self._in_head
                and self._head_bytes > MAX_HEAD_BYTES
                and not self.transport.is_closing()
            ):
                self.logger.warning("Request head over %d bytes refused.", MAX_HEAD_BYTES)
                self.transport.write(_REFUSAL)
                self.transport.close()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._in_head, self._head_bytes = True, 0

    return BoundedHttpToolsProtocol


__all__ = ["MAX_HEAD_BYTES", "http_protocol"]
