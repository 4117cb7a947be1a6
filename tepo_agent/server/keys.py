"""API keys of ``tepo-agent serve``: named keys, one admin, and per-session keys.

A keys file (``serve --keys-file keys.json``) names each application's key::

    {"keys": [
        {"name": "ops", "key": "sk-admin-...", "admin": true},
        {"name": "support-bot", "key": "sk-support-..."},
        {"name": "batch-eval", "key": "sk-batch-..."}
    ]}

Exactly one key is the admin. A request authenticates with ``Authorization: Bearer KEY``; the
key's name is the principal every recorded trajectory belongs to (stored as its ``app_tag``).
A key may read and score only its own sessions; the admin may read and score all of them, and
only the admin may load weights or open the dashboard.

A per-session key is a key followed by ``#`` and a session id, ``Bearer sk-support-...#chat-42``:
an application that cannot add headers (an unmodified OpenAI client given only ``api_key``) names
its conversation this way. Without any key configured, every request is the one principal
``default`` (an admin), and ``Bearer anything#SESSION`` still names a session.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tepo_agent.errors import ConfigError

SESSION_SEPARATOR = "#"
"""Separates a key from the session id in a per-session key."""

SESSION_HEADER = "x-session-id"
"""The request header that names a session explicitly (``X-Session-Id``)."""


@dataclass(frozen=True)
class ApiKey:
    """One key of the keys file.

    Attributes:
        name: The principal: recorded trajectories carry it as ``app_tag``; sessions are per name.
        key: The secret a client sends as ``Authorization: Bearer KEY``.
        admin: Whether this key may read and score every key's sessions (exactly one is).
    """

    name: str
    key: str
    admin: bool = False


@dataclass(frozen=True)
class Principal:
    """Who sent a request: the key's name, whether it is the admin, the session it named."""

    name: str
    admin: bool
    session: str | None = None


OPEN = ApiKey(name="default", key="", admin=True)
"""The principal of every request when no key is configured."""


class KeyRing:
    """The configured keys; :meth:`authenticate` maps an ``Authorization`` header to a principal."""

    def __init__(self, keys: list[ApiKey]) -> None:
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"key names must be unique, got {names}")
        secrets_ = [k.key for k in keys]
        if len(set(secrets_)) != len(secrets_):
            raise ConfigError("two keys of the keys file have the same secret; give each its own")
        for k in keys:
            if not k.name.strip() or not k.key:
                raise ConfigError(f"every key needs a non-empty name and key, got {k.name!r}")
            if SESSION_SEPARATOR in k.key:
                raise ConfigError(
                    f"key {k.name!r} contains {SESSION_SEPARATOR!r}, which separates a key from "
                    "a session id in per-session keys; choose a key without it"
                )
        if keys and sum(k.admin for k in keys) != 1:
            raise ConfigError(
                f'exactly one key must be the admin ("admin": true), got '
                f"{[k.name for k in keys if k.admin]}"
            )
        self.keys = tuple(keys)

    @classmethod
    def single(cls, api_key: str | None) -> KeyRing:
        """No keys (``api_key`` None: open) or one admin key named ``default`` (``--api-key``)."""
        return cls([] if not api_key else [ApiKey("default", api_key, admin=True)])

    @classmethod
    def from_file(cls, path: str | Path) -> KeyRing:
        """The keys of a keys file (the format is in the module docstring)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the keys file {path}: {exc}") from exc
        entries = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                f'the keys file {path} must hold {{"keys": [{{"name", "key", "admin"}}, ...]}} '
                "with at least one key"
            )
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or not {"name", "key"} <= set(entry):
                raise ConfigError(f"keys file {path}: each key needs a name and a key: {entry!r}")
            keys.append(ApiKey(str(entry["name"]), str(entry["key"]), bool(entry.get("admin"))))
        return cls(keys)

    @property
    def admin_key(self) -> str | None:
        """The admin's secret (None when no key is configured)."""
        return next((k.key for k in self.keys if k.admin), None)

    def authenticate(self, authorization: str, session_header: str | None) -> Principal | None:
        """The principal of a request, or None when its key is missing or wrong.

        The session is the ``X-Session-Id`` header when sent, else the part of a per-session
        key after ``#``.
        """
        token = authorization[7:] if authorization[:7].lower() == "bearer " else ""
        secret, _, session = token.partition(SESSION_SEPARATOR)
        session = (session_header or session or "").strip() or None
        if not self.keys:
            return Principal(OPEN.name, True, session)
        for key in self.keys:
            if secrets.compare_digest(secret.encode(), key.key.encode()):
                return Principal(key.name, key.admin, session)
        return None


ADMIN_PATHS = frozenset(
    {"/v1/load_lora_adapter", "/v1/unload_lora_adapter", "/v1/reload_weights", "/v1/fetch_weights"}
)
"""Routes only the admin key may call (they change the weights every key is served)."""


def install_key_check(app: Any, keys: KeyRing) -> None:
    """Check the key of every ``/v1`` request; set ``request.state.principal`` to who sent it."""
    app.add_middleware(KeyCheck, keys=keys)


class KeyCheck:
    """Pure ASGI middleware (no per-request task or body stream, unlike ``@app.middleware``):
    answers 401/403 itself, else stores the :class:`Principal` in ``scope["state"]``, which is
    where Starlette's ``request.state`` keeps its attributes."""

    def __init__(self, app: Any, keys: KeyRing) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/v1"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        session = headers.get(SESSION_HEADER.lower().encode())
        who = self.keys.authenticate(
            headers.get(b"authorization", b"").decode("latin-1"),
            None if session is None else session.decode("latin-1"),
        )
        if who is None or (path in ADMIN_PATHS and not who.admin):
            from starlette.responses import JSONResponse

            from tepo_agent.server.protocol import error_body

            if who is None:
                body = error_body(401, "invalid or missing API key", "AuthenticationError")
            else:
                body = error_body(403, "only the admin key may change weights", "PermissionError")
            await JSONResponse(body, status_code=body["error"]["code"])(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = who
        await self.app(scope, receive, send)


__all__ = [
    "ADMIN_PATHS",
    "OPEN",
    "SESSION_HEADER",
    "SESSION_SEPARATOR",
    "ApiKey",
    "KeyCheck",
    "KeyRing",
    "Principal",
    "install_key_check",
]
