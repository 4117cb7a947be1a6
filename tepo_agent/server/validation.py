"""What ``tepo-agent serve`` accepts: body size and pace, the published request schemas, names
and weight paths. Every refusal is a 4xx with an OpenAI-style ``{"error": {...}}`` body.

- **Body size** — a body over :attr:`ServeLimits.max_body_bytes` is refused with 413, from its
  ``Content-Length`` before anything is read, or while reading a chunked body.
- **Pace** — a client that stops sending its body for :attr:`ServeLimits.body_timeout_s` gets
  408 and the request ends (a slow client holds one connection, never a worker: the server is
  one asyncio loop). A request head over 16 KiB is refused before it reaches the app
  (:mod:`tepo_agent.server.http_protocol`).
- **Shape** — the routes parse raw requests (so the error bodies are vLLM's, not FastAPI's 422),
  and :func:`install` publishes each route's pydantic request model in the OpenAPI document
  (``/openapi.json``) so clients and fuzzers (schemathesis) see the bodies the routes take.
- **Names and paths** — a LoRA name is a plain name (:data:`NAME_PATTERN`); a weights path is
  an existing directory and, when :attr:`ServeLimits.weights_root` is set, resolves (symlinks
  and ``..`` followed) inside it.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tepo_agent.errors import ChatFormatError, ConfigError
from tepo_agent.server.protocol import OpenAIHTTPError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
"""A LoRA adapter name: letters, digits, ``._:-``, at most 128 characters, no ``/``."""


@dataclass(frozen=True)
class ServeLimits:
    """Limits on what clients may send to ``tepo-agent serve``."""

    max_body_bytes: int = 8 * 1024**2
    """Largest request body (413 above it). A 4,096-token prompt of ids is about 30 KB."""
    body_timeout_s: float = 30.0
    """Longest pause while a body is being received (408 after it)."""
    weights_root: Path | None = None
    """Directory every ``lora_path`` / ``weights_path`` must lie inside; None allows any
    directory the server process can read (only for servers whose clients are all trusted)."""

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes must be at least 1024, got {self.max_body_bytes}")
        if not self.body_timeout_s > 0:
            raise ConfigError(f"body_timeout_s must be positive, got {self.body_timeout_s}")


class BodyLimits:
    """ASGI middleware enforcing :attr:`ServeLimits.max_body_bytes` and ``body_timeout_s``.

    A declared over-long body is answered before the app runs. A body that grows past the limit
    or stalls is cut: the app sees the client disconnect, and whatever it answers is replaced by
    the 413 / 408 (an exception raised into the app's ``receive`` would surface as a 500 from
    middleware that reads ``receive`` in a task of its own).
    """

    def __init__(self, app: ASGIApp, limits: ServeLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.max_body_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await _answer(send, _too_large(limit) if declared.isdigit() else _bad_length())
            return
        seen, started = 0, False
        error: OpenAIHTTPError | None = None

        async def limited_receive() -> Message:
            nonlocal seen, error
            if error is not None:
                return {"type": "http.disconnect"}
            try:
                message = await asyncio.wait_for(receive(), self.limits.body_timeout_s)
            except TimeoutError:
                error = _stalled(self.limits.body_timeout_s)
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    error = _too_large(limit)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if error is None:
                started = started or message["type"] == "http.response.start"
                await send(message)
            elif not started:
                started = True
                await _answer(send, error)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if error is None:
                raise
        if error is not None and not started:
            await _answer(send, error)


def _stalled(timeout_s: float) -> OpenAIHTTPError:
    return OpenAIHTTPError(
        408,
        f"the request body stalled for {timeout_s:g} s; send it without pauses",
        "RequestTimeoutError",
    )


def _too_large(limit: int) -> OpenAIHTTPError:
    return OpenAIHTTPError(
        413, f"the request body is over the limit of {limit} bytes", "RequestTooLargeError"
    )


def _bad_length() -> OpenAIHTTPError:
    return OpenAIHTTPError(400, "the Content-Length header is not a number")


async def _answer(send: Send, error: OpenAIHTTPError) -> None:
    from starlette.responses import JSONResponse

    response = JSONResponse(error.body(), status_code=error.status)
    await response({"type": "http"}, _no_receive, send)


async def _chat_format_error(_: Request, exc: ChatFormatError) -> Any:
    """Text the client sent that no template or tokenizer can take (a lone surrogate...)."""
    from starlette.responses import JSONResponse

    return JSONResponse(OpenAIHTTPError(400, str(exc)).body(), status_code=400)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    """The request's JSON body validated as ``model``; every failure is a 400 naming it."""
    try:
        body = await request.json()
    except ClientDisconnect:
        raise OpenAIHTTPError(400, "the client closed the connection mid-body") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise OpenAIHTTPError(400, f"the request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise OpenAIHTTPError(400, "the request body is nested too deeply") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise OpenAIHTTPError(400, f"invalid {model.__name__}: {details}") from exc


def check_name(name: str, what: str = "lora_name") -> str:
    """``name`` if it is a plain adapter name, else a 400."""
    if not NAME_PATTERN.fullmatch(name):
        raise OpenAIHTTPError(
            400,
            f"{what} must be 1-128 letters, digits or '._:-' starting with a letter or digit "
            f"(no '/'), got {name[:80]!r}",
        )
    return name


def check_weights_path(path: str, limits: ServeLimits, what: str) -> str:
    """``path`` resolved, if it is a directory allowed by ``limits``, else a 400."""
    if "\x00" in path:
        raise OpenAIHTTPError(400, f"{what} holds a NUL character")
    resolved = Path(os.path.realpath(path))
    root = limits.weights_root
    if root is not None and not resolved.is_relative_to(os.path.realpath(root)):
        raise OpenAIHTTPError(
            400, f"{what} {path!r} is outside the server's weights directory {str(root)!r}"
        )
    if not resolved.is_dir():
        raise OpenAIHTTPError(400, f"{what} {path!r} is not a directory")
    return str(resolved)


def install(app: Any, bodies: dict[str, type[BaseModel]], limits: ServeLimits) -> None:
    """Add the body limits, answer ChatFormatError as a 400, and publish ``bodies`` (path ->
    request model) in the OpenAPI document as each route's required JSON request body."""
    app.add_middleware(BodyLimits, limits=limits)
    app.add_exception_handler(ChatFormatError, _chat_format_error)
    for route in app.routes:
        model = bodies.get(getattr(route, "path", ""))
        if model is not None:
            route.openapi_extra = {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref(model)}},
                }
            }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in bodies.values():
                components.update(_definitions(model))
            app.openapi_schema = schema
        return dict(app.openapi_schema)

    app.openapi = openapi


_REF = "#/components/schemas/{model}"


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF.format(model=model.__name__)}


def _definitions(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=_REF)
    definitions = schema.pop("$defs", {})
    return {**definitions, model.__name__: schema}


__all__ = [
    "NAME_PATTERN",
    "BodyLimits",
    "ServeLimits",
    "check_name",
    "check_weights_path",
    "install",
    "parse_body",
]
