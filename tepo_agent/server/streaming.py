"""Completions streamed as they are decoded: one SSE chunk per sampled token.

The in-process backend calls a request's ``on_token`` from its worker thread as each token is
sampled (continuous batching: :mod:`tepo_agent.backends._scheduler`); this module hands those
tokens to the event loop through an ``asyncio.Queue`` and writes each as a vLLM
``text_completion`` chunk: the new text, the token's logprob (``logprobs=0``) and the tepo
extension fields (its exact entropy, its id with ``return_token_ids``). The last chunk carries the
finish reason (and ``weight_versions``), then the usage when asked, then ``data: [DONE]``.

Used for ``POST /v1/completions`` with ``stream`` and one choice without top-k alternatives (those
are computed after decoding, so such a request is streamed once decoded, as before); chat
completions stream the same way (:mod:`.chat_stream`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.errors import BackendError
from tepo_agent.server import responses as r
from tepo_agent.server.protocol import CompletionRequest, error_body
from tepo_agent.server.swap_gate import SwapGate

_Token = tuple[int, float, float]  # (id, raw logprob, exact entropy)


def live_completion(
    backend: TransformersBackend,
    gate: SwapGate,
    prompt: list[int],
    params: SamplingParams,
    req: CompletionRequest,
    head: dict[str, Any],
    decode: Callable[[list[int]], str],
) -> StreamingResponse:
    """The SSE response of one completion whose tokens are sent as the backend samples them."""

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[_Token | None] = asyncio.Queue()

        def on_token(token: int, logprob: float, entropy: float) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, (token, logprob, entropy))

        async with gate.request():  # a weight swap waits for this stream to end
            future = backend.submit(prompt, params, on_token)
            # runs after the last on_token (same worker thread, FIFO): the end of the stream
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, None))
            ids: list[int] = []
            text = ""
            while (item := await tokens.get()) is not None:
                ids.append(item[0])
                full = decode(ids)
                delta = ""
                if not full.endswith("\ufffd"):  # else half a character: its rest comes later
                    delta, text = full[len(text) :], full
                yield _data(_token_chunk(head, req, item, delta, decode))
            try:
                gen = future.result()
            except BackendError as exc:
                yield _data(error_body(500, str(exc), "InternalServerError"))
                yield b"data: [DONE]\n\n"
                return
        yield _data(_last_chunk(head, req, gen, decode(ids)[len(text) :]))
        if req.stream_options and req.stream_options.include_usage:
            used = r.usage(len(prompt), len(gen.token_ids))
            yield _data({**head, "object": "text_completion", "choices": [], "usage": used})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _token_chunk(
    head: dict[str, Any],
    req: CompletionRequest,
    token: _Token,
    text: str,
    decode: Callable[[list[int]], str],
) -> dict[str, Any]:
    one = Generation((), (token[0],), (token[1],), (token[2],), "exact", "length", 0)
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": None}
    choice["logprobs"] = (
        None
        if req.logprobs is None
        else r.completion_logprobs(one, None, decode, bool(req.return_tokens_as_token_ids))
    )
    choice.update(
        r.extension_fields(
            one, return_token_ids=bool(req.return_token_ids), return_weight_versions=False
        )
    )
    return {**head, "object": "text_completion", "choices": [choice]}


def _last_chunk(
    head: dict[str, Any], req: CompletionRequest, gen: Generation, text: str
) -> dict[str, Any]:
    last: dict[str, Any] = {"index": 0, "text": text, **r.finish_fields(gen)}
    if req.return_weight_versions:
        last["weight_versions"] = r.weight_versions(gen)
    return {**head, "object": "text_completion", "choices": [last]}


__all__ = ["live_completion"]
