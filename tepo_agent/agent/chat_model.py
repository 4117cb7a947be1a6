"""TepoChatModel: a LangChain chat model over a token-exact tepo-agent backend.

It renders the conversation into token ids itself (with
:class:`~tepo_agent.chat.format.ChatFormat`), samples with any
:class:`~tepo_agent.backends.base.Backend`, parses tool calls, and returns an
``AIMessage`` whose ``response_metadata`` carries everything a trajectory needs
(docs/architecture.md, invariants 1-4)::

    token_ids, logprobs, entropies, entropy_lower/upper (estimators with bounds), entropy_kind,
    turn_entropy (H of the turn), policy_version, prompt_token_ids, finish_reason,
    prompt_render ("fresh" | "spliced" | "rerendered"), history_fingerprint

Token exactness: when the history ends with an ``AIMessage`` this model produced followed only by
tool results, and everything before that message is unchanged since it was sampled (checked with
``history_fingerprint``), the next prompt is that message's ``prompt_token_ids`` + its sampled
``token_ids`` + the environment tokens of the tool results: assistant tokens are never
re-tokenized. Any other history that contains assistant messages (written by another model, edited,
or continued with a new user message) is rendered from text and marked ``"rerendered"``.

Usage::

    model = TepoChatModel(backend=backend, chat_format=fmt).bind_tools([calculator])
    reply = model.invoke([HumanMessage("What is 17 * 23?")])
    reply.tool_calls, reply.response_metadata["turn_entropy"]

It works inside ``langchain.agents.create_agent`` and inside hand-built LangGraph graphs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field

from tepo_agent.agent.sync import run_sync
from tepo_agent.backends.base import Backend, Generation, SamplingParams
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import turn_entropy
from tepo_agent.errors import ChatFormatError, ConfigError

PromptRender = Literal["fresh", "spliced", "rerendered"]
"""How a prompt was built: ``fresh`` (no assistant turns in the history: a plain render),
``spliced`` (token-exact continuation of this model's own sampled turn), ``rerendered`` (the
history's assistant turns were re-tokenized from text: not token-exact)."""


@dataclass(frozen=True)
class RenderedPrompt:
    """The token ids a request sends to the backend, and how they were obtained."""

    token_ids: list[int]
    render: PromptRender
    fingerprint: str


def _plain_text(message: BaseMessage) -> str:
    # ``BaseMessage.text`` is a ``str`` subclass in langchain-core 1.x; templates get plain data
    return str.__str__(message.text)


def message_to_openai(message: BaseMessage) -> dict[str, Any]:
    """One LangChain message as the OpenAI-style dict ``ChatFormat`` renders.

    Tool-call arguments stay a dict (what Hugging Face chat templates expect), not a JSON string.
    """
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": _plain_text(message)}
    if isinstance(message, HumanMessage):
        return {"role": "user", "content": _plain_text(message)}
    if isinstance(message, AIMessage):
        out: dict[str, Any] = {"role": "assistant", "content": _plain_text(message)}
        if message.tool_calls:
            out["tool_calls"] = [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": call["name"], "arguments": call["args"]},
                }
                for call in message.tool_calls
            ]
        return out
    if isinstance(message, ToolMessage):
        out = {
            "role": "tool",
            "content": _plain_text(message),
            "tool_call_id": message.tool_call_id,
        }
        if message.name:
            out["name"] = message.name
        return out
    raise ChatFormatError(
        f"cannot render a {type(message).__name__} message; use System/Human/AI/Tool messages"
    )


def history_fingerprint(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> str:
    """A digest of a rendered conversation prefix and its tool schemas."""
    blob = json.dumps([list(messages), list(tools)], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _is_own_turn(message: BaseMessage) -> bool:
    meta = message.response_metadata if isinstance(message, AIMessage) else {}
    return all(key in meta for key in ("token_ids", "prompt_token_ids", "history_fingerprint"))


class TepoChatModel(BaseChatModel):
    """A LangChain chat model that samples token-exactly from a tepo-agent backend.

    Attributes:
        backend: Any :class:`Backend` (in-process transformers, HTTP to vLLM/``tepo-agent serve``).
        chat_format: Renders conversations to token ids and parses tool calls out of samples.
        max_tokens: New tokens per call (a call may lower it with ``max_tokens=``).
        temperature, top_p, top_k: Sampling parameters (see :class:`SamplingParams`).
        seed: Sampler seed for every call; None draws fresh randomness (a call may pass ``seed=``).
        entropy_window: H(t_k) over the first N tokens of the turn; None uses the whole turn.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: Backend
    chat_format: ChatFormat
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    seed: int | None = None
    entropy_window: int | None = Field(default=None, ge=1)

    @property
    def _llm_type(self) -> str:
        return "tepo"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "entropy_window": self.entropy_window,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (LangChain tools, functions or OpenAI schemas) rendered into every prompt.

        ``tool_choice`` is not supported: the chat template offers the tools and the model
        decides.
        """
        if tool_choice not in (None, "auto"):
            raise ConfigError(
                f"tool_choice={tool_choice!r} is not supported by TepoChatModel; "
                "leave it unset (the model decides whether to call a tool)"
            )
        schemas = [convert_to_openai_tool(t) for t in tools]
        return super().bind(tools=schemas, **kwargs)

    # -- prompt rendering -------------------------------------------------------------------

    def render_prompt(
        self, messages: Sequence[BaseMessage], tools: Sequence[dict[str, Any]] = ()
    ) -> RenderedPrompt:
        """The prompt token ids for ``messages`` (token-exact where the history allows it)."""
        dicts = [message_to_openai(m) for m in messages]
        tools = list(tools)
        fingerprint = history_fingerprint(dicts, tools)
        last_own = max((i for i, m in enumerate(messages) if _is_own_turn(m)), default=None)
        if last_own is not None:
            spliced = self._splice(messages, dicts, tools, last_own)
            if spliced is not None:
                return RenderedPrompt(spliced, "spliced", fingerprint)
        has_assistant = any(isinstance(m, AIMessage) for m in messages)
        ids = list(self.chat_format.render(dicts, tools, add_generation_prompt=True))
        return RenderedPrompt(ids, "rerendered" if has_assistant else "fresh", fingerprint)

    def _splice(
        self,
        messages: Sequence[BaseMessage],
        dicts: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        index: int,
    ) -> list[int] | None:
        """Continue from own turn ``messages[index]`` token-exactly, or None if impossible."""
        turn = messages[index]
        after = messages[index + 1 :]
        if not after or not all(isinstance(m, ToolMessage) for m in after):
            return None
        meta = turn.response_metadata
        if meta["history_fingerprint"] != history_fingerprint(dicts[:index], tools):
            return None
        sampled: list[int] = list(meta["token_ids"])
        ended = bool(sampled) and sampled[-1] == self.chat_format.end_of_turn_id
        env = self.chat_format.environment_tokens(
            dicts[: index + 1], dicts[index + 1 :], tools, sampled_end_of_turn=ended
        )
        return list(meta["prompt_token_ids"]) + sampled + list(env)

    # -- generation -------------------------------------------------------------------------

    def _sampling_params(self, stop: list[str] | None, kwargs: dict[str, Any]) -> SamplingParams:
        if stop:
            raise ConfigError(
                "TepoChatModel does not support string stop sequences (it would have to cut "
                "sampled tokens); the model stops at its end-of-turn token"
            )
        return SamplingParams(
            max_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
            top_k=int(kwargs.get("top_k", self.top_k)),
            seed=kwargs.get("seed", self.seed),
            stop_token_ids=tuple(self.chat_format.stop_token_ids),
        )

    def _message(self, prompt: RenderedPrompt, generation: Generation) -> AIMessage:
        ids = list(generation.token_ids)
        parsed = self.chat_format.parse(self.chat_format.decode(ids))
        entropies = list(generation.entropies)
        metadata: dict[str, Any] = {
            "model_name": "tepo",
            "token_ids": ids,
            "logprobs": list(generation.logprobs),
            "entropies": entropies,
            "entropy_kind": generation.entropy_kind,
            "turn_entropy": turn_entropy(entropies, self.entropy_window) if entropies else None,
            "policy_version": generation.policy_version,
            "replica": generation.replica,
            "prompt_token_ids": list(generation.prompt_token_ids),
            "finish_reason": generation.finish_reason,
            "prompt_render": prompt.render,
            "history_fingerprint": prompt.fingerprint,
        }
        if generation.entropy_lower is not None:
            metadata["entropy_lower"] = list(generation.entropy_lower)
        if generation.entropy_upper is not None:
            metadata["entropy_upper"] = list(generation.entropy_upper)
        message = AIMessage(
            content=parsed.content,
            tool_calls=[
                tool_call(name=c.name, args=dict(c.arguments), id=c.id) for c in parsed.tool_calls
            ],
            invalid_tool_calls=[
                invalid_tool_call(name=None, args=c.raw, id=None, error=c.error)
                for c in parsed.invalid_calls
            ],
            response_metadata=metadata,
            usage_metadata={
                "input_tokens": len(generation.prompt_token_ids),
                "output_tokens": len(ids),
                "total_tokens": len(generation.prompt_token_ids) + len(ids),
            },
        )
        return message

    def _result(self, prompt: RenderedPrompt, generation: Generation) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self._message(prompt, generation))])

    async def asample(self, prompt: RenderedPrompt, **kwargs: Any) -> AIMessage:
        """Sample one assistant turn for a prompt from :meth:`render_prompt`.

        What ``ainvoke`` does after rendering, without LangChain's run machinery (callbacks,
        tracing, the cache): :class:`~tepo_agent.agent.TepoAgent` renders each prompt once (it
        checks the token budget on it) and records its runs itself. ``kwargs`` are per-call
        sampling parameters: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``, ``seed``.
        """
        params = self._sampling_params(None, kwargs)
        generation = await self.backend.generate(prompt.token_ids, params)
        return self._message(prompt, generation)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._sampling_params(stop, kwargs)
        prompt = self.render_prompt(messages, kwargs.get("tools", ()))
        generation = await self.backend.generate(prompt.token_ids, params)
        return self._result(prompt, generation)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        params = self._sampling_params(stop, kwargs)
        prompt = self.render_prompt(messages, kwargs.get("tools", ()))
        generate_sync = getattr(self.backend, "generate_sync", None)
        if generate_sync is not None:
            generation = generate_sync(prompt.token_ids, params)
        else:
            generation = run_sync(self.backend.generate(prompt.token_ids, params))
        return self._result(prompt, generation)


__all__ = [
    "PromptRender",
    "RenderedPrompt",
    "TepoChatModel",
    "history_fingerprint",
    "message_to_openai",
    "run_sync",
]
