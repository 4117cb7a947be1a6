"""Serve published versions' files over HTTP, for replicas on hosts without a shared filesystem.

The fleet follower (:mod:`.fleet`) offers each version it publishes; a replica then fetches it
(``POST /v1/fetch_weights`` of ``tepo-agent serve``, :mod:`tepo_agent.server.weights_fetch`) and
checks every file against the manifest and the manifest against the digest recorded with the
version before it loads anything. Routes (read-only, only offered versions):

- ``GET /versions/<digest>/manifest.json``: ``{"sha256", "files": [{"path", "size", "sha256"}]}``;
- ``GET /versions/<digest>/files/<path>``: one file's bytes.

With ``token`` every request must carry ``Authorization: Bearer <token>`` (else 401). The server
runs in a daemon thread; bind it to the address the replicas reach (a private network).

Example::

    with WeightsServer("0.0.0.0", 8100) as server:
        url = server.offer("/ckpt/policy-v3")   # the manifest URL replicas fetch
"""

from __future__ import annotations

import hmac
import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from tepo_agent.errors import ConfigError, PublishError
from tepo_agent.policy.manifest import Manifest, build_manifest


class WeightsServer:
    """An HTTP server of offered version directories (module docstring).

    Args:
        host: The address to bind (``127.0.0.1`` for one host; the replicas' network otherwise).
        port: The port (0: any free one; :attr:`url` says which).
        token: The bearer token replicas must send, if any.
        advertise: The base URL replicas use to reach this server (default: ``http://host:port``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        advertise: str | None = None,
    ) -> None:
        self._offered: dict[str, tuple[Path, Manifest]] = {}
        self._lock = threading.Lock()
        self.token = token
        try:
            self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        except OSError as exc:
            raise ConfigError(f"cannot serve weights on {host}:{port}: {exc}") from exc
        self._httpd.daemon_threads = True
        bound = self._httpd.server_address[1]
        self.url = (advertise or f"http://{host}:{bound}").rstrip("/")
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="tepo-weights", daemon=True
        )
        self._thread.start()

    def offer(self, directory: str | os.PathLike[str], sha256: str | None = None) -> str:
        """Serve ``directory``; returns its manifest URL. ``sha256``, when given (the digest
        recorded at publish time), must match the files now: a changed directory is refused.
        A directory already offered under that digest is not hashed again (one hash per version,
        however many replicas fetch it)."""
        path = Path(directory).resolve()
        if sha256 is not None:
            known = self.lookup(sha256)
            if known is not None and known[0] == path:
                return self.manifest_url(sha256)
        manifest = build_manifest(path)
        if sha256 is not None and manifest.sha256 != sha256:
            raise PublishError(
                f"{path} no longer matches the digest recorded when it was published "
                f"({manifest.sha256} != {sha256}); it was modified after publishing, republish it"
            )
        with self._lock:
            self._offered[manifest.sha256] = (path, manifest)
        return self.manifest_url(manifest.sha256)

    def manifest_url(self, sha256: str) -> str:
        return f"{self.url}/versions/{sha256}/manifest.json"

    def lookup(self, sha256: str) -> tuple[Path, Manifest] | None:
        with self._lock:
            return self._offered.get(sha256)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> WeightsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _handler(server: WeightsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if server.token is not None:
                given = self.headers.get("Authorization", "")
                if not hmac.compare_digest(given.encode(), f"Bearer {server.token}".encode()):
                    self._answer(401, b'{"error": "a bearer token is required"}')
                    return
            parts = unquote(self.path.split("?", 1)[0]).split("/", 4)  # "", versions, d, kind, rest
            found = server.lookup(parts[2]) if len(parts) >= 4 and parts[1] == "versions" else None
            if found is None:
                self._answer(404, b'{"error": "no such version offered"}')
                return
            root, manifest = found
            if parts[3] == "manifest.json" and len(parts) == 4:
                self._answer(200, json.dumps(manifest.to_json()).encode())
                return
            entry = next(
                (f for f in manifest.files if len(parts) == 5 and f.path == parts[4]), None
            )
            if parts[3] != "files" or entry is None:
                self._answer(404, b'{"error": "no such file in this version"}')
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(entry.size))
            self.end_headers()
            with (root / entry.path).open("rb") as fh:
                shutil.copyfileobj(fh, self.wfile)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


__all__ = ["WeightsServer"]
