"""The generation routes of ``tepo-agent serve``: ``POST /v1/completions`` and
``POST /v1/chat/completions`` (see :mod:`tepo_agent.server.app` for what they accept)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from tepo_agent.backends.base import Generation
from tepo_agent.errors import ChatFormatError
from tepo_agent.server import recording_routes
from tepo_agent.server import responses as r
from tepo_agent.server.chat_stream import live_chat
from tepo_agent.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAIHTTPError
from tepo_agent.server.served import Served, decode_for, served
from tepo_agent.server.streaming import live_completion
from tepo_agent.server.topk import TopK
from tepo_agent.server.validation import parse_body


def _sse(chunks: list[dict[str, Any]], headers: dict[str, str] | None = None) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _json(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """``body`` encoded once by orjson (FastAPI would walk a returned dict with
    ``jsonable_encoder`` first, then encode it with ``json``: several times the cost)."""
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)


def _log_usage(request: Request, used: dict[str, int]) -> None:
    """The token counts the request log line shows (``tepo_agent.cli.serve.RequestLog``)."""
    request.state.usage = (used["prompt_tokens"], used["completion_tokens"])


async def completions(request: Request) -> Any:
    state = served(request)
    req: CompletionRequest = await parse_body(request, CompletionRequest)
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
        decode = decode_for(state, req.skip_special_tokens is not False)
        try:
            params = state.sampling(req, req.max_tokens or 16, 0)
        except ValueError as exc:  # ConfigError from SamplingParams
            raise OpenAIHTTPError(400, str(exc)) from exc
        return live_completion(state.backend, state.gate, ids, params, req, head, decode)
    results = await state.run(ids, req, req.max_tokens or 16, req.logprobs or 0)
    choices = _completion_choices(state, req, ids, results)
    head = {"id": r.new_id("cmpl"), "created": r.now(), "model": req.model or state.model_name}
    used = r.usage(len(ids), sum(len(g.token_ids) for g, _ in results))
    _log_usage(request, used)
    if not req.stream:
        return _json({**head, "object": "text_completion", "choices": choices, "usage": used})
    return _sse(r.completion_chunks(head, choices, used, req))


def _completion_choices(
    state: Served,
    req: CompletionRequest,
    ids: list[int],
    results: list[tuple[Generation, TopK | None]],
) -> list[dict[str, Any]]:
    decode = decode_for(state, req.skip_special_tokens is not False)
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
    state = served(request)
    req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
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
    if req.stream and req.n == 1 and k == 0:  # sent token by token as decoded
        try:
            params = state.sampling(req, max_tokens, 0)
        except ValueError as exc:  # ConfigError from SamplingParams
            raise OpenAIHTTPError(400, str(exc)) from exc

        def choose(gen: Generation) -> dict[str, Any]:
            return _chat_choices(state, req, [(gen, None)])[0]

        return live_chat(state, ids, params, req, plan, choose)
    results = await state.run(ids, req, max_tokens, k)
    choices = _chat_choices(state, req, results)
    head = {"id": r.new_id("chatcmpl"), "created": r.now(), "model": req.model or state.model_name}
    used = r.usage(len(ids), sum(len(g.token_ids) for g, _ in results))
    headers: dict[str, str] = {}
    if plan is not None and state.recorder is not None:
        answers = [(g, c["message"]) for (g, _), c in zip(results, choices, strict=True)]
        headers = state.recorder.record(plan, head["id"], answers)
    _log_usage(request, used)
    if not req.stream:
        body = {**head, "object": "chat.completion", "choices": choices, "usage": used}
        if req.return_token_ids:
            body["prompt_token_ids"] = ids
        return _json(body, headers)
    return _sse(r.chat_chunks(head, choices, used, req, ids), headers)


def _chat_choices(
    state: Served, req: ChatCompletionRequest, results: list[tuple[Generation, TopK | None]]
) -> list[dict[str, Any]]:
    chat_format = state.chat_format
    decode = decode_for(state, req.skip_special_tokens is not False)
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


__all__ = ["chat_completions", "completions"]
