"""``tepo-agent serve`` on a real uvicorn server: vLLM-valid answers, 4xx errors, weight swaps,
and the HttpBackend against it matching the in-process backend token for token.

The model is the tiny random default model, fine-tuned here for a few seconds to memorise one tool
call, so the chat route has a real tool call to parse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import torch
import uvicorn

from tepo_agent.backends.base import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.cli.serve import add_request_log
from tepo_agent.model.default import DefaultModelConfig, init_model
from tepo_agent.net import free_port
from tepo_agent.server.app import create_app

MAX_LEN = 512
# vLLM 0.33's own request/response schemas (pydantic model_json_schema), vendored from shared/.
PROTOCOL = Path(__file__).parent / "data" / "vllm-0.33-protocol"
NAME = "tiny"
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate arithmetic.",
            "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
        },
    }
]
MESSAGES = [{"role": "user", "content": "What is 2+2?"}]
CALL_TEXT = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "2+2"}}\n</tool_call>'


SMALL = DefaultModelConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=MAX_LEN,
)


def schema(name: str) -> dict[str, Any]:
    path = PROTOCOL / f"{name}.schema.json"
    return json.loads(path.read_text())


def _memorise_tool_call(model_dir: Path) -> None:
    """Fine-tune the random model until greedy decoding answers MESSAGES with CALL_TEXT."""
    from transformers import AutoModelForCausalLM

    fmt = ChatFormat.from_pretrained(model_dir)
    prompt = fmt.render(MESSAGES, TOOLS)
    target = [*fmt.encode(CALL_TEXT), fmt.end_of_turn_id]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    ids = torch.tensor([prompt + target])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains far faster without thread contention
    try:
        for _ in range(300):
            loss = model(input_ids=ids, labels=labels).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if loss.item() < 0.005:
                break
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(str(model_dir))


class LiveServer:
    """A real uvicorn server on 127.0.0.1, on a free port, in a thread."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = init_model(tmp_path_factory.mktemp("model") / "tiny", seed=0, config=SMALL)
    _memorise_tool_call(path)
    return path


@pytest.fixture(scope="module")
def fmt(model_dir: Path) -> ChatFormat:
    return ChatFormat.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def server(model_dir: Path, fmt: ChatFormat) -> Iterator[tuple[LiveServer, TransformersBackend]]:
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=8)
    app = create_app(backend, fmt, model_name=NAME, api_key=KEY)
    add_request_log(app, lambda: backend.policy_version)  # as `tepo-agent serve` does
    with LiveServer(app) as live:
        yield live, backend
    backend.close()


@pytest.fixture
def client(server: tuple[LiveServer, TransformersBackend]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server[0].url, headers=AUTH, timeout=60) as c:
        yield c


def _sse(response: httpx.Response) -> list[dict[str, Any]]:
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


# -- routes and formats -----------------------------------------------------------------------


def test_health_is_open_and_models_need_the_key(client: httpx.Client) -> None:
    assert httpx.get(f"{client.base_url}/health").status_code == 200
    denied = httpx.get(f"{client.base_url}/v1/models")
    assert denied.status_code == 401
    assert set(denied.json()["error"]) >= {"message", "type", "code"}
    models = client.get("/v1/models").json()
    assert [m["id"] for m in models["data"]] == [NAME]


def test_token_completion_with_topk_validates_and_reports_exact_entropy(
    client: httpx.Client, fmt: ChatFormat
) -> None:
    prompt = fmt.render(MESSAGES)
    body = {
        "model": NAME,
        "prompt": prompt,
        "max_tokens": 6,
        "temperature": 0,
        "logprobs": 5,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "return_weight_versions": True,
    }
    answer = client.post("/v1/completions", json=body).json()
    jsonschema.validate(answer, schema("CompletionResponse"))
    choice = answer["choices"][0]
    n = len(choice["token_ids"])
    assert 1 <= n <= 6 and choice["prompt_token_ids"] == prompt
    assert len(choice["entropies"]) == n and choice["entropy_kind"] == "exact"
    assert choice["weight_versions"] == [{"version": "0", "start": 0, "end": n}]
    for token, lp, top in zip(
        choice["token_ids"],
        choice["logprobs"]["token_logprobs"],
        choice["logprobs"]["top_logprobs"],
        strict=True,
    ):
        assert all(key.startswith("token_id:") for key in top)
        # greedy: the sampled token is the most likely one
        assert max(top.values()) == pytest.approx(lp, abs=1e-5)
        assert top[f"token_id:{token}"] == pytest.approx(lp, abs=1e-5)
    assert answer["usage"]["completion_tokens"] == n


def test_text_prompt_streams_vllm_chunks(client: httpx.Client) -> None:
    body = {
        "prompt": "hello",
        "max_tokens": 4,
        "stream": True,
        "logprobs": 0,
        "return_weight_versions": True,
        "stream_options": {"include_usage": True},
    }
    chunks = _sse(client.post("/v1/completions", json=body))
    for chunk in chunks:
        jsonschema.validate(chunk, schema("CompletionStreamResponse"))
    finals = [c for c in chunks if c["choices"] and c["choices"][0].get("finish_reason")]
    assert len(finals) == 1 and "weight_versions" in finals[0]["choices"][0]
    assert chunks[-1]["usage"]["prompt_tokens"] >= 1


def test_chat_parses_the_tool_call(client: httpx.Client) -> None:
    body = {
        "model": NAME,
        "messages": MESSAGES,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 64,
        "logprobs": True,
        "top_logprobs": 3,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
        "return_weight_versions": True,
    }
    answer = client.post("/v1/chat/completions", json=body).json()
    jsonschema.validate(answer, schema("ChatCompletionResponse"))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "calculator"
    assert json.loads(call["function"]["arguments"]) == {"expression": "2+2"}
    content = choice["logprobs"]["content"]
    assert len(content) == len(choice["token_ids"]) == len(choice["entropies"])
    assert all(len(c["top_logprobs"]) == 3 for c in content)


def test_chat_tool_call_cut_by_max_tokens_comes_back_as_content(client: httpx.Client) -> None:
    body = {"model": NAME, "messages": MESSAGES, "tools": TOOLS, "temperature": 0, "max_tokens": 6}
    answer = client.post("/v1/chat/completions", json=body).json()
    jsonschema.validate(answer, schema("ChatCompletionResponse"))
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "length"
    assert choice["message"]["tool_calls"] == []
    # what the model wrote, as vLLM returns it (the memorised call, cut after 6 tokens)
    assert choice["message"]["content"].startswith("<tool_call>")


def test_each_request_is_logged_on_one_line(
    client: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tepo_agent.serve")
    body = {"model": NAME, "messages": MESSAGES, "max_tokens": 3, "temperature": 0}
    answer = client.post("/v1/chat/completions", json=body)
    assert answer.status_code == 200
    usage = answer.json()["usage"]
    assert client.get("/v1/nothing").status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "tepo_agent.serve"]
    assert len(lines) == 2, lines
    tokens = f"{usage['prompt_tokens']}\\+{usage['completion_tokens']}"
    assert re.fullmatch(
        rf'127\.0\.0\.1 "POST /v1/chat/completions" 200 tokens={tokens} \d+\.\d{{3}}s v0', lines[0]
    ), lines[0]
    assert '"GET /v1/nothing" 404 tokens=-' in lines[1]


def test_chat_stream_chunks_validate_and_carry_the_tool_call(client: httpx.Client) -> None:
    body = {
        "messages": MESSAGES,
        "tools": TOOLS,
        "temperature": 0,
        "stream": True,
        "return_token_ids": True,
        "return_weight_versions": True,
    }
    chunks = _sse(client.post("/v1/chat/completions", json=body))
    for chunk in chunks:
        jsonschema.validate(chunk, schema("ChatCompletionStreamResponse"))
    calls = [d for c in chunks for d in c["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["function"]["name"] for c in calls] == ["calculator"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("route", "content", "status"),
    [
        ("/v1/completions", b"{not json", 400),
        ("/v1/completions", {"max_tokens": 3}, 400),
        ("/v1/completions", {"prompt": [1, 2], "max_tokens": 0}, 400),
        ("/v1/completions", {"prompt": [1, 2], "model": "nope"}, 404),
        ("/v1/completions", {"prompt": [1, 2], "logprobs": 21}, 400),
        ("/v1/completions", {"prompt": [1, 512]}, 400),
        ("/v1/completions", {"prompt": [-1]}, 400),
        ("/v1/completions", {"prompt": [1] * MAX_LEN}, 400),
        ("/v1/completions", {"prompt": [1], "stop": ["x"]}, 400),
        ("/v1/chat/completions", {"messages": []}, 400),
        ("/v1/chat/completions", {"messages": MESSAGES, "top_logprobs": 50}, 400),
        ("/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "/nonexistent"}, 400),
        ("/v1/reload_weights", {"weights_path": "/nonexistent"}, 400),
        ("/v1/nothing", {}, 404),
    ],
)
def test_bad_requests_get_openai_errors_and_the_server_lives_on(
    client: httpx.Client, route: str, content: Any, status: int
) -> None:
    if isinstance(content, bytes):
        response = client.post(route, content=content, headers={"Content-Type": "application/json"})
    else:
        response = client.post(route, json=content)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] and error["code"] == status
    assert client.get("/health").status_code == 200


# -- the done-when test: HttpBackend against serve == in-process backend ----------------------


async def test_http_backend_matches_in_process_backend(
    server: tuple[LiveServer, TransformersBackend], model_dir: Path, fmt: ChatFormat
) -> None:
    live, served = server
    local = TransformersBackend.from_pretrained(model_dir, device="cpu")
    config = HttpBackendConfig(live.url, NAME, api_key=KEY, entropy_estimator="topk")
    remote = HttpBackend(config, vocab_size=served.vocab_size)
    try:
        params = SamplingParams(max_tokens=24, temperature=0)
        for messages in (MESSAGES, [{"role": "user", "content": "Tell me about graphs."}]):
            prompt = fmt.render(messages, TOOLS)
            want = await local.generate(prompt, params)
            got = await remote.generate(prompt, params)
            assert got.token_ids == want.token_ids
            assert got.finish_reason == want.finish_reason
            assert got.policy_version == want.policy_version == 0
            for a, b in zip(got.logprobs, want.logprobs, strict=True):
                assert a == pytest.approx(b, abs=1e-4)
            assert got.entropy_kind == "topk"
            assert got.entropy_lower is not None and got.entropy_upper is not None
            for low, exact, high in zip(
                got.entropy_lower, want.entropies, got.entropy_upper, strict=True
            ):
                assert low - 1e-4 <= exact <= high + 1e-4
    finally:
        await remote.aclose()
        await local.aclose()


# -- weight swaps -----------------------------------------------------------------------------


def _greedy_ids(client: httpx.Client, prompt: list[int], model: str = NAME) -> tuple[list, str]:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": 8,
        "temperature": 0,
        "return_token_ids": True,
        "return_weight_versions": True,
        "logprobs": 0,
    }
    choice = client.post("/v1/completions", json=body).json()["choices"][0]
    return choice["logprobs"]["token_logprobs"], choice["weight_versions"][0]["version"]


def test_lora_adapter_is_merged_between_requests_and_unloaded(
    client: httpx.Client, model_dir: Path, fmt: ChatFormat, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir))
    lora = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, lora)
    peft_model.save_pretrained(str(tmp_path / "adapter-v5"))
    merged = peft_model.merge_and_unload()

    prompt = fmt.render(MESSAGES)
    before, version_before = _greedy_ids(client, prompt)
    answer = client.post(
        "/v1/load_lora_adapter",
        json={"lora_name": "policy-5", "lora_path": str(tmp_path / "adapter-v5")},
    )
    assert answer.status_code == 200, answer.text
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [NAME, "policy-5"]
    after, version_after = _greedy_ids(client, prompt, model="policy-5")
    assert version_after == "5" != version_before
    with torch.no_grad():
        ids = torch.tensor([prompt])
        logp = torch.log_softmax(merged(input_ids=ids).logits[0, -1].float(), -1)
    assert after[0] == pytest.approx(logp.max().item(), abs=1e-4)
    assert after != before

    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "policy-5"}).status_code == 200
    restored, _ = _greedy_ids(client, prompt)
    assert restored == pytest.approx(before, abs=1e-5)


def test_reload_weights_swaps_full_weights_and_sets_the_version(
    client: httpx.Client, model_dir: Path, fmt: ChatFormat, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    prompt = fmt.render(MESSAGES)
    before, _ = _greedy_ids(client, prompt)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.model.norm.weight.mul_(1.5)
    model.save_pretrained(str(tmp_path / "v7"))
    answer = client.post(
        "/v1/reload_weights", json={"weights_path": str(tmp_path / "v7"), "version": 7}
    )
    assert answer.status_code == 200, answer.text
    after, version = _greedy_ids(client, prompt)
    assert version == "7" and after != before
    original = client.post(
        "/v1/reload_weights", json={"weights_path": str(model_dir), "version": 0}
    )
    assert original.status_code == 200
    assert _greedy_ids(client, prompt) == (pytest.approx(before, abs=1e-5), "0")


async def test_concurrent_requests_all_succeed_with_the_sequential_answers(
    server: tuple[LiveServer, TransformersBackend], fmt: ChatFormat
) -> None:
    live, _ = server
    prompts = [fmt.render([{"role": "user", "content": f"question {i}"}]) for i in range(6)]
    config = HttpBackendConfig(live.url, NAME, api_key=KEY, entropy_estimator="surprisal")
    remote = HttpBackend(config, vocab_size=512)
    params = SamplingParams(max_tokens=5, temperature=0)
    together = await asyncio.gather(*(remote.generate(p, params) for p in prompts))
    alone = [await remote.generate(p, params) for p in prompts]
    await remote.aclose()
    assert [g.token_ids for g in together] == [g.token_ids for g in alone]


# -- the CLI ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_serve_starts_a_server_with_the_env_api_key(
    model_dir: Path, wait_healthy: Callable[..., None]
) -> None:
    port = free_port()
    env = {**os.environ, "TEPO_AGENT_API_KEY": "from-env"}
    cmd = [
        sys.executable,
        "-m",
        "tepo_agent",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--served-model-name",
        "cli-model",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, 120)
        assert httpx.get(f"{url}/v1/models").status_code == 401
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer from-env"})
        assert [m["id"] for m in models.json()["data"]] == ["cli-model"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_server_estimator_reads_serves_exact_entropies(
    server: tuple[LiveServer, TransformersBackend], model_dir: Path, fmt: ChatFormat
) -> None:
    live, served = server
    local = TransformersBackend.from_pretrained(model_dir, device="cpu")
    config = HttpBackendConfig(live.url, NAME, api_key=KEY, entropy_estimator="server")
    remote = HttpBackend(config, vocab_size=served.vocab_size)
    try:
        # logprobs=0: serve skips the top-k pass, yet the client gets exact entropies.
        assert remote.build_completion_request([1, 2], SamplingParams())["logprobs"] == 0
        params = SamplingParams(max_tokens=16, temperature=0)
        prompt = fmt.render(MESSAGES, TOOLS)
        want = await local.generate(prompt, params)
        got = await remote.generate(prompt, params)
        assert got.entropy_kind == "exact" and got.entropy_lower is None
        assert got.entropies == pytest.approx(want.entropies, abs=1e-4)
    finally:
        await remote.aclose()
        await local.aclose()
