"""``tepo-agent serve``: the in-process backend behind a vLLM/OpenAI-compatible FastAPI app.

Several application processes can share one local model through it, and the HTTP backend is
tested against it. Routes (a subset of vLLM 0.33's server, its extensions included):

- ``GET /health``, ``GET /v1/models`` (the served model, plus the loaded LoRA adapter);
- ``POST /v1/completions``: token-id or text prompt, ``logprobs=k``, ``return_token_ids``,
  ``return_tokens_as_token_ids``, ``return_weight_versions``, ``stream``;
- ``POST /v1/chat/completions``: messages + tools rendered with the model's chat template, tool
  calls parsed into ``message.tool_calls``, ``logprobs``/``top_logprobs``, ``stream``;
- ``POST /v1/load_lora_adapter`` / ``POST /v1/unload_lora_adapter`` (adapter merged into the base
  weights) and ``POST /v1/reload_weights {"weights_path", "version"}`` (full weights);
- ``POST /v1/fetch_weights``: copy a published version from another host, verified by its
  sha256, to load it with the routes above (:mod:`.weights_fetch`);
- with a recorder (``serve --record``, :mod:`.recording`): every chat completion recorded, and
  ``POST /v1/feedback``, ``GET /v1/sessions/{id}``, ``GET /v1/recording/metrics``.

Every choice also carries ``entropies``: the EXACT per-token entropy (see :mod:`.responses`).
Requests go to one shared :class:`~tepo_agent.backends.transformers_backend.TransformersBackend`,
so concurrent HTTP requests are decoded in the same batches. Weight swaps wait for the requests
in flight and hold new ones back until the new weights serve (docs/architecture.md, invariant 7).
A streamed completion or chat completion with one choice and no top-k alternatives is sent token
by token as the backend decodes it (:mod:`.streaming`, :mod:`.chat_stream`: a chat stream's tool
calls are parsed from the whole answer and sent before its finish); other streamed answers are
sent once decoded (top-k alternatives are computed from the whole choice), all in vLLM's SSE chunk
format ending with ``data: [DONE]``. The routes live in :mod:`.generation_routes` and
:mod:`.weight_routes`, the served state in :mod:`.served`.

Usage::

    app = create_app(backend, ChatFormat.from_pretrained(path), model_name="tepo-default")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import BackendError
from tepo_agent.server import recording_routes, weights_fetch
from tepo_agent.server import responses as r
from tepo_agent.server.generation_routes import chat_completions, completions
from tepo_agent.server.keys import KeyRing, install_key_check
from tepo_agent.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    LoadLoRAAdapterRequest,
    OpenAIHTTPError,
    ReloadWeightsRequest,
    UnloadLoRAAdapterRequest,
    error_body,
)
from tepo_agent.server.recording import Recorder
from tepo_agent.server.served import Served, served
from tepo_agent.server.validation import ServeLimits, install
from tepo_agent.server.weight_routes import load_lora_adapter, reload_weights, unload_lora_adapter


def create_app(
    backend: TransformersBackend,
    chat_format: ChatFormat,
    *,
    model_name: str,
    api_key: str | None = None,
    keys: KeyRing | None = None,
    recorder: Recorder | None = None,
    limits: ServeLimits | None = None,
) -> Any:
    """The FastAPI app serving ``backend`` as ``model_name`` (Bearer ``api_key`` when set).

    ``keys`` (named keys, one admin: :mod:`tepo_agent.server.keys`) replaces ``api_key``; only
    the admin may load weights. With a ``recorder`` every chat completion is recorded
    (:mod:`tepo_agent.server.recording`) and the feedback routes are served. The app owns
    neither: close them, and the backend, after the server stops. The routes below read the
    served state from ``request.app.state.tepo``.
    """
    if keys is None:
        keys = KeyRing.single(api_key)
    app = FastAPI(title="tepo-agent serve")
    app.state.tepo = Served(backend, chat_format, model_name, recorder=recorder)
    app.add_exception_handler(OpenAIHTTPError, _openai_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(BackendError, _backend_error)  # type: ignore[arg-type]

    install_key_check(app, keys)

    for method, path, endpoint in (*_ROUTES, *weights_fetch.ROUTES):
        app.add_api_route(path, endpoint, methods=[method])
    if recorder is not None:
        for method, path, endpoint in recording_routes.ROUTES:
            app.add_api_route(path, endpoint, methods=[method])
    app.state.tepo_limits = limits or ServeLimits()
    install(app, _BODIES, app.state.tepo_limits)  # body size/pace; request schemas in OpenAPI
    return app


# -- errors ------------------------------------------------------------------------------------


async def _openai_error(_: Request, exc: OpenAIHTTPError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    kind = "NotFoundError" if exc.status_code == 404 else "BadRequestError"
    return JSONResponse(error_body(exc.status_code, str(exc.detail), kind), exc.status_code)


async def _backend_error(_: Request, exc: BackendError) -> JSONResponse:
    return JSONResponse(error_body(500, str(exc), "InternalServerError"), 500)


# -- routes ------------------------------------------------------------------------------------


async def health() -> Response:
    return Response(status_code=200)


async def models(request: Request) -> dict[str, Any]:
    state = served(request)
    card = {
        "id": state.model_name,
        "object": "model",
        "created": r.now(),
        "owned_by": "tepo-agent",
        "root": state.model_name,
        "parent": None,
        "max_model_len": state.max_positions,
        "policy_version": state.backend.policy_version,
    }
    data = [card]
    if state.lora:
        data.append(
            {**card, "id": state.lora[0], "root": state.lora[1], "parent": state.model_name}
        )
    return {"object": "list", "data": data}


_ROUTES: tuple[tuple[str, str, Callable[..., Awaitable[Any]]], ...] = (
    ("GET", "/health", health),
    ("GET", "/v1/models", models),
    ("POST", "/v1/completions", completions),
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/v1/load_lora_adapter", load_lora_adapter),
    ("POST", "/v1/unload_lora_adapter", unload_lora_adapter),
    ("POST", "/v1/reload_weights", reload_weights),
)


_BODIES: dict[str, type[BaseModel]] = {
    "/v1/completions": CompletionRequest,
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/load_lora_adapter": LoadLoRAAdapterRequest,
    "/v1/unload_lora_adapter": UnloadLoRAAdapterRequest,
    "/v1/reload_weights": ReloadWeightsRequest,
    "/v1/fetch_weights": weights_fetch.FetchWeightsRequest,
    "/v1/feedback": recording_routes.FeedbackRequest,  # served with --record
}
"""Each route's request model, published in the OpenAPI document."""


__all__ = ["create_app"]
