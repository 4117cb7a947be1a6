"""``tepo-agent serve`` streams a completion token by token while the backend decodes it, and the
chunks add up to the answer the same request gets without streaming.

A real uvicorn server on 127.0.0.1 (tests/test_serve.py's LiveServer) over the random-weight
default model; prompts are token ids.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest
from test_serve import LiveServer, schema

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.server.app import create_app

SMALL = DefaultModelConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)
PROMPT = [5, 17, 42, 99, 3, 250, 7]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, TransformersBackend]]:
    path = init_model(tmp_path_factory.mktemp("model") / "tiny", seed=0, config=SMALL)
    backend = TransformersBackend.from_pretrained(path, device="cpu", eos_token_ids=())
    app = create_app(backend, ChatFormat.from_pretrained(path), model_name="tiny")
    with LiveServer(app) as live:
        yield live.url, backend
    backend.close()


def _events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[6:])


def test_tokens_arrive_while_the_request_is_still_decoding(
    served: tuple[str, TransformersBackend],
) -> None:
    url, backend = served
    done_before = backend.stats.requests
    body = {"prompt": PROMPT, "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        events = _events(response.iter_lines())
        first = next(events)
        # 300 decode steps are far from done when the first token's chunk is read
        assert backend.stats.requests == done_before
        rest = list(events)
    assert len(first["choices"][0]["entropies"]) == 1
    assert rest[-1]["choices"][0]["finish_reason"] == "length"


def test_the_chunks_add_up_to_the_unstreamed_answer(
    served: tuple[str, TransformersBackend],
) -> None:
    url, _ = served
    body: dict[str, Any] = {
        "prompt": PROMPT,
        "max_tokens": 24,
        "temperature": 1.0,
        "seed": 3,
        "logprobs": 0,
        "return_token_ids": True,
        "return_weight_versions": True,
        "stream_options": {"include_usage": True},
    }
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    response = httpx.post(f"{url}/v1/completions", json={**body, "stream": True}, timeout=60)
    chunks = list(_events(iter(response.text.splitlines())))
    assert response.text.rstrip().endswith("data: [DONE]")
    for chunk in chunks:
        jsonschema.validate(chunk, schema("CompletionStreamResponse"))
    tokens = [c["choices"][0] for c in chunks[:-2]]
    assert len(tokens) == 24  # one chunk per token, then the finish, then the usage
    assert [t for c in tokens for t in c["token_ids"]] == whole["token_ids"]
    assert [h for c in tokens for h in c["entropies"]] == pytest.approx(whole["entropies"])
    logprobs = [lp for c in tokens for lp in c["logprobs"]["token_logprobs"]]
    assert logprobs == pytest.approx(whole["logprobs"]["token_logprobs"])
    text = "".join(c["text"] for c in tokens) + chunks[-2]["choices"][0]["text"]
    assert text == whole["text"]
    assert chunks[-2]["choices"][0]["finish_reason"] == whole["finish_reason"]
    assert chunks[-2]["choices"][0]["weight_versions"] == whole["weight_versions"]
    assert chunks[-1]["usage"]["completion_tokens"] == 24


# -- chat completions -------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Tell me a long story."}]


def test_chat_tokens_arrive_while_the_request_is_still_decoding(
    served: tuple[str, TransformersBackend],
) -> None:
    url, backend = served
    done_before = backend.stats.requests
    body = {"messages": MESSAGES, "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as response:
        events = _events(response.iter_lines())
        opening = next(events)
        first_token = next(events)
        # 300 decode steps are far from done when the first token's chunk is read
        assert backend.stats.requests == done_before
        rest = list(events)
    assert opening["choices"][0]["delta"]["role"] == "assistant"
    assert len(first_token["choices"][0]["entropies"]) == 1
    tokens = [c for c in [first_token, *rest] if c["choices"] and "entropies" in c["choices"][0]]
    assert len(tokens) == 300
    assert rest[-1]["choices"][0]["finish_reason"] == "length"


def test_the_chat_chunks_add_up_to_the_unstreamed_answer(
    served: tuple[str, TransformersBackend],
) -> None:
    url, _ = served
    body: dict[str, Any] = {
        "messages": MESSAGES,
        "max_tokens": 40,
        "temperature": 1.0,
        "seed": 11,
        "logprobs": True,
        "return_token_ids": True,
        "return_weight_versions": True,
        "stream_options": {"include_usage": True},
    }
    whole = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60).json()
    response = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": True}, timeout=60)
    assert response.text.rstrip().endswith("data: [DONE]")
    chunks = list(_events(iter(response.text.splitlines())))
    for chunk in chunks:
        jsonschema.validate(chunk, schema("ChatCompletionStreamResponse"))
    assert chunks[0]["prompt_token_ids"] == whole["prompt_token_ids"]
    choice = whole["choices"][0]
    tokens = [c["choices"][0] for c in chunks if c["choices"] and "entropies" in c["choices"][0]]
    assert [t for c in tokens for t in c["token_ids"]] == choice["token_ids"]
    assert [h for c in tokens for h in c["entropies"]] == pytest.approx(choice["entropies"])
    logprobs = [e["logprob"] for c in tokens for e in c["logprobs"]["content"]]
    assert logprobs == pytest.approx([e["logprob"] for e in choice["logprobs"]["content"]])
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == (choice["message"]["content"] or "")
    finish = chunks[-2]["choices"][0]
    assert finish["finish_reason"] == choice["finish_reason"]
    assert finish["weight_versions"] == choice["weight_versions"]
    assert chunks[-1]["usage"] == whole["usage"]
