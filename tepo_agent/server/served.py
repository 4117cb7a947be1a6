"""What ``tepo-agent serve`` serves: the backend, the chat format and the weights' state.

:class:`Served` is stored on ``app.state.tepo`` by :func:`tepo_agent.server.app.create_app`; the
route modules (:mod:`.generation_routes`, :mod:`.weight_routes`) read it with :func:`served`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from torch import Tensor

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAIHTTPError
from tepo_agent.server.recording import Recorder
from tepo_agent.server.swap_gate import SwapGate
from tepo_agent.server.topk import TopK, topk_alternatives


@dataclass
class Served:
    backend: TransformersBackend
    chat_format: ChatFormat
    model_name: str
    gate: SwapGate = field(default_factory=SwapGate)
    base_weights: dict[str, Tensor] | None = None  # set when the first adapter is merged
    lora: tuple[str, str] | None = None  # (lora_name, lora_path) of the merged adapter
    recorder: Recorder | None = None  # serve --record
    # the text of single tokens, by skip_special_tokens: logprobs label every sampled token, and
    # a tokenizer call per token was the largest tokenizer cost of a request (at most 2 x vocab)
    token_texts: dict[bool, dict[int, str]] = field(default_factory=lambda: {False: {}, True: {}})

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


def decode_for(state: Served, skip_special: bool) -> Callable[[list[int]], str]:
    """The text of token ids, special tokens skipped or kept; one token's text is remembered."""
    tokenizer = state.chat_format.tokenizer
    texts = state.token_texts[skip_special]

    def text(ids: list[int]) -> str:
        if not skip_special:
            return state.chat_format.decode(ids)
        return str(tokenizer.decode(ids, skip_special_tokens=True))

    def decode(ids: list[int]) -> str:
        if len(ids) != 1:
            return text(ids)
        known = texts.get(ids[0])
        if known is None:
            known = texts[ids[0]] = text(ids)
        return known

    return decode


def served(request: Request) -> Served:
    """The served state of the app handling ``request``."""
    state: Served = request.app.state.tepo
    return state


__all__ = ["Served", "decode_for", "served"]
