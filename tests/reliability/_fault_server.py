"""A misbehaving HTTP server for the fault tests, run as its own process on 127.0.0.1.

    python _fault_server.py PORT MODE [UPSTREAM]

Modes: ``proxy`` forwards every request to UPSTREAM (a real ``tepo-agent serve``) and answers
what it answered; ``hang`` reads a request, writes ``hanging`` to stdout and never answers (the
test SIGKILLs it mid-request); ``5xx`` answers 503 with an error body; ``truncated`` forwards,
then cuts the JSON body in half (the declared length kept, the connection closed); ``schema``
answers 200 with JSON that violates the completions schema. Prints ``ready`` when listening.
"""

from __future__ import annotations

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

PORT, MODE = int(sys.argv[1]), sys.argv[2]
UPSTREAM = sys.argv[3] if len(sys.argv) > 3 else ""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _forward(self, body: bytes) -> httpx.Response:
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization",)}
        headers["content-type"] = "application/json"
        method = self.command
        return httpx.request(method, UPSTREAM + self.path, content=body, headers=headers)

    def _send(self, status: int, body: bytes, *, declared: int | None = None) -> None:
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body) if declared is None else declared))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def handle_request(self) -> None:
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length) if length else b""  # always read: keep-alive
        if MODE == "hang":
            print("hanging", flush=True)
            threading_event.wait()
        elif MODE == "5xx":
            error = {"error": {"message": "overloaded", "type": "ServiceUnavailable"}}
            self._send(503, json.dumps(error).encode())
        elif MODE == "schema":
            self._send(200, json.dumps({"id": "x", "choices": [{"text": 7}]}).encode())
        else:
            answer = self._forward(body)
            if MODE == "truncated":
                self._send(
                    answer.status_code,
                    answer.content[: len(answer.content) // 2],
                    declared=len(answer.content),
                )
                self.close_connection = True
            else:
                self._send(answer.status_code, answer.content)

    do_GET = handle_request
    do_POST = handle_request


if __name__ == "__main__":
    import threading

    threading_event = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    print("ready", flush=True)
    server.serve_forever()
