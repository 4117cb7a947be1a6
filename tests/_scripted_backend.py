"""Test helpers for the agent tests: a tiny real model, and a backend that samples given texts.

Random-weight models produce garbage, so tests that need a particular tool call use
:class:`ScriptedBackend`: the *tokens* are forced (the next scripted text, encoded, plus the
end-of-turn token), but their logprobs and entropies come from a real forward pass of the tiny
model over prompt + tokens, exactly as a real backend would report them. It records every prompt it
received, so tests can check token exactness against what the backend actually saw.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from tepo_agent.backends.base import Generation, SamplingParams
from tepo_agent.chat.format import ChatFormat
from tepo_agent.entropy import token_logprobs_and_entropy
from tepo_agent.model.default import init_model
from tepo_agent.model.io import load_causal_lm

CALC_CALL = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "%s"}}\n</tool_call>'


def calc_call(expression: str) -> str:
    """The canonical text of a calculator call in the default chat template."""
    return CALC_CALL % expression


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return init_model(tmp_path_factory.mktemp("tiny") / "model", seed=0)


@pytest.fixture(scope="session")
def chat_format(tiny_model_dir: Path) -> ChatFormat:
    return ChatFormat.from_pretrained(tiny_model_dir)


class ScriptedBackend:
    """A Backend that samples the next scripted text; logprobs/entropies from the real model."""

    def __init__(
        self,
        model_dir: Path,
        chat_format: ChatFormat,
        script: Sequence[str],
        *,
        policy_version: int = 3,
    ) -> None:
        self._model = load_causal_lm(model_dir)
        self._format = chat_format
        self._script = list(script)
        self._version = policy_version
        self._lock = threading.Lock()
        self.prompts: list[list[int]] = []
        self.generations: list[Generation] = []

    @property
    def policy_version(self) -> int:
        return self._version

    @property
    def vocab_size(self) -> int:
        return int(self._model.get_output_embeddings().weight.shape[0])

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        return self._sample(list(prompt_token_ids), params)

    def _sample(self, prompt: list[int], params: SamplingParams) -> Generation:
        with self._lock:
            text = self._script.pop(0) if self._script else "The answer is 42."
            ids = [*self._format.encode(text), self._format.end_of_turn_id]
            ids = ids[: params.max_tokens]
            with torch.no_grad():
                logits = self._model(torch.tensor([prompt + ids])).logits[0]  # (T, V)
            n = len(prompt)
            logp, ent = token_logprobs_and_entropy(
                logits[n - 1 : n + len(ids) - 1], torch.tensor(ids)
            )
            generation = Generation(
                prompt_token_ids=tuple(prompt),
                token_ids=tuple(ids),
                logprobs=tuple(logp.tolist()),
                entropies=tuple(ent.tolist()),
                entropy_kind="exact",
                finish_reason="stop" if ids[-1] == self._format.end_of_turn_id else "length",
                policy_version=self._version,
            )
            self.prompts.append(prompt)
            self.generations.append(generation)
            return generation

    async def aclose(self) -> None:
        return None
