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
A streamed completion with one choice and no top-k alternatives is sent token by token as the
backend decodes it (:mod:`.streaming`); other streamed answers are sent once a choice has been
decoded (top-k alternatives and tool calls are computed from the whole choice), all in vLLM's SSE
chunk format ending with ``data: [DONE]``.

Usage::

    app = create_app(backend, ChatFormat.from_pretrained(path), model_name="tepo-default")
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from torch import Tensor

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import BackendError, ChatFormatError, ModelLoadError
from tepo_agent.model.lora import merged_lora_weights, snapshot_weights
from tepo_agent.server import recording_routes, weights_fetch
from tepo_agent.server import responses as r
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
from tepo_agent.server.streaming import live_completion
from tepo_agent.server.swap_gate import SwapGate
from tepo_agent.server.topk import TopK, topk_alternatives
from tepo_agent.server.validation import (
    ServeLimits,
    check_name,
    check_weights_path,
    install,
    parse_body,
)

_TRAILING_INT = re.compile(r"(\d+)$")


@dataclass
class _State:
    backend: TransformersBackend
    chat_format: ChatFormat
    model_name: str
    gate: SwapGate = field(default_factory=SwapGate)
    base_weights: dict[str, Tensor] | None = None  # set when the first adapter is merged
    lora: tuple[str, str] | None = None  # (lora_name, lora_path) of the merged adapter
    recorder: Recorder | None = None  # serve --record

    @property
    def max_positions(self) -> int | None:
        return getattr(self.backend.model.config, "max_position_embeddings", None)

    def check_model(self, name: str | None) -> None:
        names = {self.model_name} | ({self.lora[0]} if self.lora else set())
        if name is not None and name not in names:
            raise OpenAIHTTPError(
                404,
                f"The model `{name}` does not exist (served: {sorted(names)}).",
                "NotFoundError",
            )

    def check_prompt(self, prompt: list[int]) -> None:
        if not prompt:
            raise OpenAIHTTPError(400, "the prompt is empty")
        vocab = self.backend.vocab_size
        bad = [t for t in prompt if not 0 <= t < vocab]
        if bad:
            raise OpenAIHTTPError(
                400, f"prompt token ids {bad[:5]} are outside the vocabulary [0, {vocab})"
            )
        limit = self.max_positions
        if limit is not None and len(prompt) >= limit:
            raise OpenAIHTTPError(
                400,
                f"This model's maximum context length is {limit} tokens; the prompt has "
                f"{len(prompt)} tokens (leave room for at least one new token).",
            )

    def sampling(
        self, req: CompletionRequest | ChatCompletionRequest, max_tokens: int, i: int
    ) -> SamplingParams:
        """Sampling parameters of choice ``i`` (its seed is ``seed + i``)."""
        seed = None if req.seed is None else req.seed + i
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=-1 if req.top_k in (None, 0) else req.top_k,
            seed=seed,
            stop_token_ids=tuple(req.stop_token_ids or ()),
        )

    async def run(
        self,
        prompt: list[int],
        req: CompletionRequest | ChatCompletionRequest,
        max_tokens: int,
        k: int,
    ) -> list[tuple[Generation, TopK | None]]:
        """``req.n`` generations (+ top-k alternatives when k > 0), all on the same weights."""
        async with self.gate.request():
            try:
                gens = await asyncio.gather(
                    *(
                        self.backend.generate(prompt, self.sampling(req, max_tokens, i))
                        for i in range(req.n)
                    )
                )
            except ValueError as exc:  # ConfigError from SamplingParams
                raise OpenAIHTTPError(400, str(exc)) from exc
            if k <= 0:
                return [(g, None) for g in gens]
            model = self.backend.model
            tops = [
                await asyncio.to_thread(topk_alternatives, model, prompt, g.token_ids, k)
                for g in gens
            ]
            return list(zip(gens, tops, strict=True))


def _decode_for(state: _State, skip_special: bool) -> Callable[[list[int]], str]:
    if not skip_special:
        return state.chat_format.decode
    tokenizer = state.chat_format.tokenizer

    def decode(ids: list[int]) -> str:
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    return decode


async def _parse(request: Request, model: type[BaseModel]) -> Any:
    return await parse_body(request, model)


def _sse(chunks: list[dict[str, Any]], headers: dict[str, str] | None = None) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


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
    app.state.tepo = _State(backend, chat_format, model_name, recorder=recorder)
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


def _served(request: Request) -> _State:
    state: _State = request.app.state.tepo
    return state


async def health() -> Response:
    return Response(status_code=200)


async def models(request: Request) -> dict[str, Any]:
    state = _served(request)
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


async def completions(request: Request) -> Any:
    state = _served(request)
    req: CompletionRequest = await _parse(request, CompletionRequest)
    state.check_model(req.model)
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], list | str):
        if len(prompt) != 1:
            raise OpenAIHTTPError(400, "send one prompt per request (got a batch)")
        prompt = prompt[0]
    ids = (
        state.chat_format.encode(prompt)  # type: ignore[arg-type]
        if isinstance(prompt, str)
        else [int(t) for t in prompt]  # type: ignore[union-attr]
    )
    state.check_prompt(ids)
    if req.stream and req.n == 1 and not req.logprobs:  # sent token by token as decoded
        head = {"id": r.new_id("cmpl"), "created": r.now(), "model": req.model or state.model_name}
        decode = _decode_for(state, req.skip_special_tokens is not False)
        try:
            params = state.sampling(req, req.max_tokens or 16, 0)
        except ValueError as exc:  # ConfigError from SamplingParams
            raise OpenAIHTTPError(400, str(exc)) from exc
        return live_completion(state.backend, state.gate, ids, params, req, head, decode)
    results = await state.run(ids, req, req.max_tokens or 16, req.logprobs or 0)
    choices = _completion_choices(state, req, ids, results)
    head = {"id": r.new_id("cmpl"), "created": r.now(), "model": req.model or state.model_name}
    used = r.usage(len(ids), sum(len(g.token_ids) for g, _ in results))
    if not req.stream:
        return {**head, "object": "text_completion", "choices": choices, "usage": used}
    return _sse(r.completion_chunks(head, choices, used, req))


def _completion_choices(
    state: _State,
    req: CompletionRequest,
    ids: list[int],
    results: list[tuple[Generation, TopK | None]],
) -> list[dict[str, Any]]:
    decode = _decode_for(state, req.skip_special_tokens is not False)
    as_ids = bool(req.return_tokens_as_token_ids)
    choices = []
    for index, (gen, top) in enumerate(results):
        choice: dict[str, Any] = {"index": index, "text": decode(list(gen.token_ids))}
        choice["logprobs"] = (
            None if req.logprobs is None else r.completion_logprobs(gen, top, decode, as_ids)
        )
        choice.update(r.finish_fields(gen))
        choice.update(
            r.extension_fields(
                gen,
                return_token_ids=bool(req.return_token_ids),
                return_weight_versions=req.return_weight_versions,
            )
        )
        if req.return_token_ids:
            choice["prompt_token_ids"] = ids
        choices.append(choice)
    return choices


async def chat_completions(request: Request) -> Any:
    state = _served(request)
    req: ChatCompletionRequest = await _parse(request, ChatCompletionRequest)
    state.check_model(req.model)
    tools = None if req.tool_choice == "none" else req.tools
    try:
        ids = state.chat_format.render(r.text_messages(req.messages), tools)
    except ChatFormatError as exc:
        raise OpenAIHTTPError(400, str(exc)) from exc
    plan = None
    if state.recorder is not None:  # the linked conversation's sampled ids, spliced
        who = recording_routes.principal(request)
        plan = state.recorder.plan(who, req.messages, tools, ids)
        ids = plan.prompt_ids if plan is not None else ids
    state.check_prompt(ids)
    limit = state.max_positions
    default_max = (limit - len(ids)) if limit is not None else 256
    max_tokens = req.max_completion_tokens or req.max_tokens or default_max
    k = (req.top_logprobs or 0) if req.logprobs else 0
    results = await state.run(ids, req, max_tokens, k)
    choices = _chat_choices(state, req, results)
    head = {"id": r.new_id("chatcmpl"), "created": r.now(), "model": req.model or state.model_name}
    used = r.usage(len(ids), sum(len(g.token_ids) for g, _ in results))
    headers: dict[str, str] = {}
    if plan is not None and state.recorder is not None:
        answers = [(g, c["message"]) for (g, _), c in zip(results, choices, strict=True)]
        headers = state.recorder.record(plan, head["id"], answers)
    if not req.stream:
        body = {**head, "object": "chat.completion", "choices": choices, "usage": used}
        if req.return_token_ids:
            body["prompt_token_ids"] = ids
        return JSONResponse(body, headers=headers)
    return _sse(r.chat_chunks(head, choices, used, req, ids), headers)


def _chat_choices(
    state: _State, req: ChatCompletionRequest, results: list[tuple[Generation, TopK | None]]
) -> list[dict[str, Any]]:
    chat_format = state.chat_format
    decode = _decode_for(state, req.skip_special_tokens is not False)
    as_ids = bool(req.return_tokens_as_token_ids)
    choices = []
    for index, (gen, top) in enumerate(results):
        text = chat_format.decode(list(gen.token_ids))
        parsed = chat_format.parse(text)
        calls = r.tool_call_objects(parsed.tool_calls)
        # A call the parser could not read (cut by max_tokens, bad JSON) comes back as the
        # text the model wrote, as vLLM does, never as an empty message.
        content = parsed.content
        if parsed.invalid_calls:
            content = chat_format.strip_stop_markers(text)
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        message["tool_calls"] = calls
        finish = r.finish_fields(gen)
        if calls and gen.finish_reason == "stop":
            finish["finish_reason"] = "tool_calls"
        choice: dict[str, Any] = {"index": index, "message": message, **finish}
        choice["logprobs"] = r.chat_logprobs(gen, top, decode, as_ids) if req.logprobs else None
        choice.update(
            r.extension_fields(
                gen,
                return_token_ids=bool(req.return_token_ids),
                return_weight_versions=req.return_weight_versions,
            )
        )
        choices.append(choice)
    return choices


async def load_lora_adapter(request: Request) -> Any:
    state = _served(request)
    backend, model_name = state.backend, state.model_name
    req: LoadLoRAAdapterRequest = await _parse(request, LoadLoRAAdapterRequest)
    check_name(req.lora_name)
    lora_path = check_weights_path(req.lora_path, request.app.state.tepo_limits, "lora_path")
    if req.lora_name == model_name:
        raise OpenAIHTTPError(400, f"lora_name must differ from the base model {model_name!r}")
    match = _TRAILING_INT.search(req.lora_name)
    version = int(match.group(1)) if match else backend.policy_version + 1
    async with state.gate.swap():
        if state.base_weights is None:
            state.base_weights = await asyncio.to_thread(snapshot_weights, backend.model)
        try:
            merged = await asyncio.to_thread(
                merged_lora_weights, backend.model, state.base_weights, lora_path
            )
            await asyncio.to_thread(backend.load_state_dict, merged, policy_version=version)
        except (ModelLoadError, BackendError) as exc:
            raise OpenAIHTTPError(400, str(exc)) from exc
        state.lora = (req.lora_name, req.lora_path)
    return {"status": "ok", "lora_name": req.lora_name, "policy_version": version}


async def unload_lora_adapter(request: Request) -> Any:
    state = _served(request)
    req: UnloadLoRAAdapterRequest = await _parse(request, UnloadLoRAAdapterRequest)
    if state.lora is None or state.lora[0] != req.lora_name or state.base_weights is None:
        raise OpenAIHTTPError(
            404, f"no LoRA adapter named {req.lora_name!r} is loaded", "NotFoundError"
        )
    version = state.backend.policy_version + 1
    async with state.gate.swap():
        base = state.base_weights
        assert base is not None
        await asyncio.to_thread(state.backend.load_state_dict, base, policy_version=version)
        state.lora = None
    return {"status": "ok", "policy_version": version}


async def reload_weights(request: Request) -> Any:
    state = _served(request)
    req: ReloadWeightsRequest = await _parse(request, ReloadWeightsRequest)
    path = check_weights_path(req.weights_path, request.app.state.tepo_limits, "weights_path")
    version = state.backend.policy_version + 1 if req.version is None else req.version
    async with state.gate.swap():
        try:
            await asyncio.to_thread(state.backend.load_weights, path, policy_version=version)
        except (ModelLoadError, BackendError) as exc:
            raise OpenAIHTTPError(400, str(exc)) from exc
        state.base_weights = None  # the new full weights are the base of later adapters
        state.lora = None
    return {"status": "ok", "policy_version": version}


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
