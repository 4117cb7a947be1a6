"""Chat completions streamed as they are decoded: one SSE chunk per sampled token.

Each token's chunk carries the content it adds (``delta.content``), its logprob (with
``logprobs: true``) and the tepo extension fields (its exact entropy, its id with
``return_token_ids``), as the completion stream does (:mod:`.streaming`). Tool calls are parsed
from the whole answer and sent at the end, as vLLM does for a tool parser without streaming
support: once the answer's text reaches ``<tool_call>``, no more content is streamed, and the
chunk before the finish carries the rest of the message's content (if any) and the calls.

The concatenated ``delta.content`` of a stream is exactly the ``message.content`` of the same
answer unstreamed (:class:`ContentDeltas` only sends text that the final message starts with:
leading whitespace, a possible start of ``<tool_call>`` and trailing whitespace or end-of-turn
markers are held back until the text after them is known), so a client that sends the streamed
message back continues the recorded trajectory (:mod:`.sessions` links by exact content).

Used for ``POST /v1/chat/completions`` with ``stream``, one choice and no top-k alternatives
(those are computed after decoding, so such a request is streamed once decoded, as before).
With ``serve --record`` the response headers are sent before the answer is recorded: they name
the session and the trajectory the answer is planned into; the last chunk's ``trajectory_ids``
names where it was recorded (the two differ only when another request continued the same
conversation meanwhile; an empty list when recording failed).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
from fastapi.responses import StreamingResponse

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.chat.format import TOOL_CALL_OPEN, ChatFormat
from tepo_agent.errors import BackendError
from tepo_agent.server import responses as r
from tepo_agent.server.protocol import ChatCompletionRequest, error_body
from tepo_agent.server.served import Served, decode_for
from tepo_agent.server.sessions import Plan

_Token = tuple[int, float, float]  # (id, raw logprob, exact entropy)


class ContentDeltas:
    """Which part of an answer's text may be sent as content while the answer is decoded.

    ``push(text)`` takes the whole text decoded so far and returns the new content to send; the
    content sent is always a prefix of the final ``message.content`` (see the module docstring).
    """

    def __init__(self, stop_texts: Sequence[str]) -> None:
        self._markers = tuple(m for m in (*stop_texts, TOOL_CALL_OPEN) if m)
        self._stop_texts = tuple(m for m in stop_texts if m)
        self.sent = ""
        self._closed = False  # a tool call began: the rest is parsed at the end

    def push(self, text: str) -> str:
        if self._closed or text.endswith("\ufffd"):  # half a character: its rest comes later
            return ""
        open_at = text.find(TOOL_CALL_OPEN)
        if open_at >= 0:
            text, self._closed = text[:open_at], True
        else:
            text = text[: len(text) - self._partial_marker(text)]
        safe = self._strip_end(text).lstrip()
        if not safe.startswith(self.sent):  # never: the safe text only grows
            return ""
        delta, self.sent = safe[len(self.sent) :], safe
        return delta

    def rest(self, content: str | None) -> str:
        """What the final ``content`` adds to the content sent so far."""
        content = content or ""
        return content[len(self.sent) :] if content.startswith(self.sent) else ""

    def _partial_marker(self, text: str) -> int:
        """Length of the longest end of ``text`` that a marker starts with (0: none)."""
        longest = 0
        for marker in self._markers:
            for n in range(min(len(marker) - 1, len(text)), longest, -1):
                if marker.startswith(text[-n:]):
                    longest = n
                    break
        return longest

    def _strip_end(self, text: str) -> str:
        stripped, changed = text.rstrip(), True
        while changed:
            changed = False
            for marker in self._stop_texts:
                if stripped.endswith(marker):
                    stripped, changed = stripped[: -len(marker)].rstrip(), True
        return stripped


def live_chat(
    state: Served,
    prompt: list[int],
    params: SamplingParams,
    req: ChatCompletionRequest,
    plan: Plan | None,
    choose: Callable[[Generation], dict[str, Any]],
) -> StreamingResponse:
    """The SSE response of one chat completion sent as the backend samples it; ``choose`` turns
    the finished generation into its (unstreamed) choice, whose message the stream ends with."""
    head = {"id": r.new_id("chatcmpl"), "created": r.now(), "model": req.model or state.model_name}
    base = {**head, "object": "chat.completion.chunk"}
    headers: dict[str, str] = {}
    if plan is not None:
        announced = plan.extend.id if plan.extend is not None else plan.new_trajectory_id
        headers = {"x-tepo-session-id": plan.session_id, "x-tepo-trajectory-id": announced}
    fmt = state.chat_format

    async def events() -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue[_Token | None] = asyncio.Queue()

        def on_token(token: int, logprob: float, entropy: float) -> None:
            loop.call_soon_threadsafe(tokens.put_nowait, (token, logprob, entropy))

        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
        opening = {**base, "choices": [{**first, "finish_reason": None}]}
        if req.return_token_ids:
            opening["prompt_token_ids"] = prompt
        yield _data(opening)
        async with state.gate.request():  # a weight swap waits for this stream to end
            future = state.backend.submit(prompt, params, on_token)
            future.add_done_callback(lambda _: loop.call_soon_threadsafe(tokens.put_nowait, None))
            ids: list[int] = []
            content = ContentDeltas(_stop_texts(fmt))
            while (item := await tokens.get()) is not None:
                ids.append(item[0])
                delta = content.push(fmt.decode(ids))
                yield _data({**base, "choices": [_token_choice(state, req, item, delta)]})
            try:
                gen = future.result()
            except BackendError as exc:
                yield _data(error_body(500, str(exc), "InternalServerError"))
                yield b"data: [DONE]\n\n"
                return
        choice = choose(gen)
        recorded = _record(state, plan, head["id"], gen, choice)
        for chunk in _ending(base, req, choice, content.rest(choice["message"]["content"])):
            yield _data(chunk)
        if plan is not None:
            yield _data({**base, "choices": [], "trajectory_ids": recorded})
        if req.stream_options and req.stream_options.include_usage:
            used = r.usage(len(prompt), len(gen.token_ids))
            yield _data({**base, "choices": [], "usage": used})
        yield b"data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def _stop_texts(fmt: ChatFormat) -> list[str]:
    return [fmt.decode([i]) for i in fmt.stop_token_ids]


def _record(
    state: Served, plan: Plan | None, response_id: str, gen: Generation, choice: dict[str, Any]
) -> list[str]:
    if plan is None or state.recorder is None:
        return []
    headers = state.recorder.record(plan, response_id, [(gen, choice["message"])])
    ids = headers.get("x-tepo-trajectory-id", "")
    return ids.split(",") if ids else []


def _token_choice(
    state: Served, req: ChatCompletionRequest, token: _Token, delta: str
) -> dict[str, Any]:
    one = Generation((), (token[0],), (token[1],), (token[2],), "exact", "length", 0)
    choice: dict[str, Any] = {"index": 0, "delta": {"content": delta}, "finish_reason": None}
    if req.logprobs:
        decode = decode_for(state, req.skip_special_tokens is not False)
        choice["logprobs"] = r.chat_logprobs(
            one, None, decode, bool(req.return_tokens_as_token_ids)
        )
    else:
        choice["logprobs"] = None
    choice.update(
        r.extension_fields(
            one, return_token_ids=bool(req.return_token_ids), return_weight_versions=False
        )
    )
    return choice


def _ending(
    base: dict[str, Any], req: ChatCompletionRequest, choice: dict[str, Any], rest: str
) -> list[dict[str, Any]]:
    """The chunks after the last token's: the rest of the content and the tool calls (when
    any), then the finish."""
    chunks: list[dict[str, Any]] = []
    calls = choice["message"]["tool_calls"]
    if rest or calls:
        delta: dict[str, Any] = {"content": rest} if rest else {}
        if calls:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(calls)]
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    last: dict[str, Any] = {
        "index": 0,
        "delta": {},
        "finish_reason": choice["finish_reason"],
        "stop_reason": choice["stop_reason"],
    }
    if req.return_weight_versions:
        last["weight_versions"] = choice["weight_versions"]
    chunks.append({**base, "choices": [last]})
    return chunks


def _data(chunk: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


__all__ = ["ContentDeltas", "live_chat"]
