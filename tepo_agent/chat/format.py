"""Token-exact chat rendering: conversations to token ids through the model's own chat template.

The runtime, never the server, turns a conversation into token ids (docs/architecture.md,
invariant 1). A trajectory is built incrementally::

    fmt = ChatFormat.from_pretrained(model_dir)
    ids = fmt.render(messages, tools)                    # prompt, ends with the generation prompt
    gen = await backend.generate(ids, SamplingParams(stop_token_ids=fmt.stop_token_ids))
    turn = fmt.parse(fmt.decode(gen.token_ids))          # content + tool calls, never an exception
    messages.append(turn.as_message())
    ...run the tools, giving OpenAI-style tool messages...
    env = fmt.environment_tokens(messages, tool_messages, tools,
                                 sampled_end_of_turn=gen.token_ids[-1] == fmt.end_of_turn_id)
    ids = ids + list(gen.token_ids) + env                # the next prompt; sampled ids kept as-is

``environment_tokens`` is what the template puts after the sampled assistant text: the rest of the
turn's closer (all of it when generation was cut off by ``max_tokens``), the rendered tool
messages, the next generation prompt. It is computed from text differences of full renderings,
so concatenating prompt, sampled and environment ids gives exactly ``render`` of the whole
conversation whenever the model sampled the canonical tokens (tests prove it for the default
template and for Qwen2.5's).

Messages are OpenAI-style dicts: ``role`` (system/user/assistant/tool), ``content``, assistant
``tool_calls=[{"id", "type": "function", "function": {"name", "arguments": dict}}]`` (a JSON
string for ``arguments`` is parsed), tool ``tool_call_id`` and ``name``. Tools are OpenAI function
schemas ``{"type": "function", "function": {...}}``. Tool calls are parsed from Qwen / Hermes
markup: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from tepo_agent.chat._direct_template import DirectTemplate
from tepo_agent.chat._segment_encoder import SegmentEncoder
from tepo_agent.chat._untrusted import UntrustedText
from tepo_agent.errors import ChatFormatError

Message = Mapping[str, Any]

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
_TOOL_CALL_BLOCK = re.compile(
    re.escape(TOOL_CALL_OPEN) + r"(.*?)" + re.escape(TOOL_CALL_CLOSE), re.S
)
# Probe texts: plain words, so templates that trim or escape content leave them unchanged.
_PROBE_USER = "tepoprobeuser"
_PROBE_ASSISTANT = "tepoprobeassistant"


@dataclass(frozen=True)
class ToolCall:
    """A well-formed tool call the model made; ``id`` is fresh, made up by ``ChatFormat.parse``."""

    id: str
    name: str
    arguments: dict[str, Any] = field(hash=False)

    def as_openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry for this call."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(frozen=True)
class InvalidToolCall:
    """A ``<tool_call>`` block that could not be used: ``raw`` is the block as sampled (markers
    included), ``error`` says what was wrong, phrased so it can be shown to the model."""

    raw: str
    error: str


@dataclass(frozen=True)
class ParsedTurn:
    """A sampled assistant turn: ``content`` is the text outside tool-call blocks (stripped, end
    of turn marker removed), then the valid and invalid calls in the order they were sampled."""

    content: str
    tool_calls: tuple[ToolCall, ...]
    invalid_calls: tuple[InvalidToolCall, ...]

    def as_message(self) -> dict[str, Any]:
        """The assistant message to append to the history (valid calls only)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.tool_calls:
            message["tool_calls"] = [call.as_openai() for call in self.tool_calls]
        return message


def new_tool_call_id() -> str:
    """A fresh OpenAI-style tool call id."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _normalize(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Copies of ``messages`` with tool-call arguments as dicts (templates ``tojson`` them)."""
    out: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        if "role" not in message:
            raise ChatFormatError(f"message {index} has no 'role': {dict(message)!r}")
        copy = dict(message)
        calls = copy.get("tool_calls")
        if calls:
            fixed = []
            for call in calls:
                call = dict(call)
                function = dict(call.get("function", call))
                arguments = function.get("arguments", {})
                if isinstance(arguments, str):
                    try:
                        arguments = json.loads(arguments) if arguments.strip() else {}
                    except json.JSONDecodeError as exc:
                        raise ChatFormatError(
                            f"message {index}: tool call arguments are not valid JSON ({exc}); "
                            "pass them as a dict"
                        ) from exc
                function["arguments"] = arguments
                call["function"] = function
                fixed.append(call)
            copy["tool_calls"] = fixed
        out.append(copy)
    return out


class ChatFormat:
    """Renders conversations with a tokenizer's chat template and parses sampled turns.

    Attributes:
        tokenizer: The model's tokenizer.
        chat_template: The Jinja template in use (the tokenizer's unless one was passed).
        end_of_turn_id: The token that closes an assistant turn (``<|im_end|>`` for ChatML),
            found by rendering a probe conversation.
        stop_token_ids: End of turn and eos, for ``SamplingParams.stop_token_ids``.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, *, chat_template: str | None = None
    ) -> None:
        self.tokenizer = tokenizer
        template = chat_template or tokenizer.chat_template
        if not isinstance(template, str) or not template:
            raise ChatFormatError(
                "the tokenizer has no chat template (a string); pass chat_template= or use a "
                "chat/instruct model directory"
            )
        self.chat_template: str = template
        self._segments = SegmentEncoder.create(tokenizer)
        self._direct = DirectTemplate.create(tokenizer, template)
        self._untrusted = UntrustedText(tokenizer)
        self._closer = self._probe_closer()
        closer_ids = self.encode(self._closer)
        added = tokenizer.added_tokens_decoder
        if not closer_ids or closer_ids[0] not in added:
            raise ChatFormatError(
                f"the chat template closes an assistant turn with {self._closer!r}, which does "
                "not start with a special token; tepo-agent needs an end-of-turn token to stop on"
            )
        self.end_of_turn_id: int = closer_ids[0]
        self._end_of_turn_text = self.decode([self.end_of_turn_id])
        stops = [self.end_of_turn_id]
        eos = tokenizer.eos_token_id
        if isinstance(eos, int) and eos not in stops:
            stops.append(eos)
        self.stop_token_ids: tuple[int, ...] = tuple(stops)
        self._stop_texts = tuple(self.decode([i]) for i in self.stop_token_ids)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str]) -> ChatFormat:
        """The chat format of the model directory ``path`` (its tokenizer and chat template).

        The tokenizer is the class ``AutoTokenizer`` would load, chosen without importing torch
        (:mod:`tepo_agent.chat.tokenizer_class`): an application that talks to a model server
        over HTTP renders its prompts with ``tokenizers`` and the compiled chat template only.
        """
        from tepo_agent.chat.tokenizer_class import load_tokenizer_without_torch

        return cls(load_tokenizer_without_torch(path))

    # -- rendering -------------------------------------------------------------------------

    def render_text(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> str:
        """The template's text for ``messages`` (and ``tools``), special tokens as text."""
        return self._untrusted.unmark(
            self._render_marked(messages, tools, add_generation_prompt=add_generation_prompt)
        )

    def _render_marked(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None,
        *,
        add_generation_prompt: bool,
    ) -> str:
        """The rendering with added-token text of user/tool contents replaced by marks."""
        normalized = self._untrusted.mark_messages(_normalize(messages))
        tool_dicts = [dict(tool) for tool in tools] if tools else None
        if self._direct is not None:
            try:
                direct = self._direct.render(
                    normalized, tool_dicts, add_generation_prompt=add_generation_prompt
                )
            except Exception:  # apply_chat_template below reports the template's error
                direct = None
            if direct is not None:
                return _require_text(direct)
        try:
            text = self.tokenizer.apply_chat_template(
                normalized,
                tools=tool_dicts,
                chat_template=self.chat_template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
            )
        except ChatFormatError:
            raise
        except Exception as exc:  # jinja2 errors, raise_exception() in templates, bad fields
            raise ChatFormatError(f"the chat template cannot render these messages: {exc}") from exc
        if not isinstance(text, str):
            raise ChatFormatError(f"the chat template rendered a {type(text).__name__}, not text")
        return _require_text(text)

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Token ids of :meth:`render_text` (no BOS beyond what the template writes).

        Added-token text inside user and tool contents (a user typing ``<|im_end|>``) is
        tokenized as ordinary text, never as the added token's id; see
        :mod:`tepo_agent.chat._untrusted`.
        """
        marked = self._render_marked(messages, tools, add_generation_prompt=add_generation_prompt)
        return self._untrusted.encode(marked, self.encode)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text become their ids (use
        :meth:`render` for conversations: it keeps typed special-token text plain)."""
        _require_text(text)
        if self._segments is not None:  # the same ids, text seen before is not re-tokenized
            return self._segments.encode(text)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens kept, no clean-up (so it inverts :meth:`encode`)."""
        text = self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
        if not isinstance(text, str):
            raise ChatFormatError(f"the tokenizer decoded {list(ids)[:8]}... to a list, not text")
        return text

    def environment_tokens(
        self,
        history: Sequence[Message],
        tool_messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        sampled_end_of_turn: bool,
    ) -> list[int]:
        """The ids that follow a sampled assistant turn, up to the next generation prompt.

        ``history`` is the conversation ending with the assistant message just sampled (e.g.
        ``parse(...).as_message()``); ``tool_messages`` are the messages that follow it (tool
        results). ``sampled_end_of_turn`` says whether the sampled ids end with
        ``end_of_turn_id``; if not (cut off by ``max_tokens``), the whole closer is included.
        """
        if not history or history[-1].get("role") != "assistant":
            raise ChatFormatError(
                "history must end with the assistant message the model just sampled; append "
                "ParsedTurn.as_message() before asking for the environment tokens"
            )
        before = self._render_marked(history, tools, add_generation_prompt=False)
        after = self._render_marked([*history, *tool_messages], tools, add_generation_prompt=True)
        if not after.startswith(before) or not before.endswith(self._closer):
            raise ChatFormatError(
                "this chat template does not allow incremental rendering: rendering more "
                "messages changes the text of earlier ones (or the assistant turn does not end "
                f"with {self._closer!r}), so sampled tokens cannot be kept as they are"
            )
        closer = self._closer
        if sampled_end_of_turn:
            closer = closer[len(self._end_of_turn_text) :]
        return self._untrusted.encode(closer + after[len(before) :], self.encode)

    def _probe_closer(self) -> str:
        """What the template writes after an assistant message's content (``<|im_end|>\\n``)."""
        probe: list[dict[str, Any]] = [{"role": "user", "content": _PROBE_USER}]
        prompt = self.render_text(probe, add_generation_prompt=True)
        full = self.render_text(
            [*probe, {"role": "assistant", "content": _PROBE_ASSISTANT}],
            add_generation_prompt=False,
        )
        if not full.startswith(prompt) or not full[len(prompt) :].startswith(_PROBE_ASSISTANT):
            raise ChatFormatError(
                "this chat template does not allow incremental rendering: an assistant message "
                "does not render as the generation prompt followed by its content "
                f"(generation prompt ends {prompt[-40:]!r}, message renders "
                f"{full[len(prompt) - 40 :]!r})"
            )
        return full[len(prompt) + len(_PROBE_ASSISTANT) :]

    # -- parsing ---------------------------------------------------------------------------

    def parse(self, text: str) -> ParsedTurn:
        """Split a sampled assistant turn into content and tool calls; never raises.

        Each ``<tool_call>...</tool_call>`` block must hold a JSON object with a non-empty string
        ``name`` and an object ``arguments`` (missing means ``{}``; a JSON string holding an
        object is accepted). Anything else, and a block left open at the end (cut off), becomes
        an :class:`InvalidToolCall`. Every valid call gets a fresh id.
        """
        text = self._strip_stop_markers(text)
        calls: list[ToolCall] = []
        invalid: list[InvalidToolCall] = []
        pieces: list[str] = []
        position = 0
        for match in _TOOL_CALL_BLOCK.finditer(text):
            pieces.append(text[position : match.start()])
            position = match.end()
            call = _parse_call(match.group(1))
            if isinstance(call, str):
                invalid.append(InvalidToolCall(raw=match.group(0), error=call))
            else:
                calls.append(call)
        rest = text[position:]
        open_at = rest.find(TOOL_CALL_OPEN)
        if open_at >= 0:
            invalid.append(
                InvalidToolCall(
                    raw=rest[open_at:],
                    error=f"{TOOL_CALL_OPEN} was never closed with {TOOL_CALL_CLOSE}",
                )
            )
            rest = rest[:open_at]
        pieces.append(rest)
        return ParsedTurn(
            content="".join(pieces).strip(),
            tool_calls=tuple(calls),
            invalid_calls=tuple(invalid),
        )

    def strip_stop_markers(self, text: str) -> str:
        """``text`` without the end-of-turn markers it ends with (what a reply shows)."""
        return self._strip_stop_markers(text).strip()

    def _strip_stop_markers(self, text: str) -> str:
        stripped = text.rstrip()
        changed = True
        while changed:
            changed = False
            for marker in self._stop_texts:
                if marker and stripped.endswith(marker):
                    stripped = stripped[: -len(marker)].rstrip()
                    changed = True
        return stripped


def _require_text(text: str) -> str:
    """``text``, if it is valid Unicode; a lone UTF-16 surrogate (``"\\ud800"`` in JSON decodes
    to one) cannot be encoded to UTF-8, so no tokenizer can read it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ChatFormatError(
            f"the text holds a lone surrogate {text[exc.start]!r} at character {exc.start}, "
            "which is not valid Unicode; decode bytes with errors='replace' before sending them"
        ) from None
    return text


def _parse_call(body: str) -> ToolCall | str:
    """A ToolCall from a block's JSON body, or the error message saying why not."""
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as exc:
        return f"the tool call is not valid JSON ({exc.msg} at character {exc.pos})"
    if not isinstance(obj, dict):
        return (
            'the tool call must be a JSON object {"name": ..., "arguments": {...}}, '
            f"got a {type(obj).__name__}"
        )
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        return 'the tool call has no "name" (a non-empty string naming the tool)'
    arguments = obj.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return '"arguments" is a string that is not a JSON object'
    if not isinstance(arguments, dict):
        return f'"arguments" must be a JSON object, got a {type(arguments).__name__}'
    return ToolCall(id=new_tool_call_id(), name=name.strip(), arguments=arguments)


__all__ = [
    "ChatFormat",
    "InvalidToolCall",
    "Message",
    "ParsedTurn",
    "ToolCall",
    "new_tool_call_id",
]
