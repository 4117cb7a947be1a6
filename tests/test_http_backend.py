"""HttpBackend: vLLM-valid request bodies, response parsing, retries against real flaky servers.

The servers here are real HTTP servers on 127.0.0.1 that play back scripted vLLM answers (vLLM
itself cannot run on this machine); tests/test_serve.py runs the backend against a live
``tepo-agent serve``.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tepo_agent.backends.base import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.errors import BackendError, BackendUnavailableError, ConfigError
from tepo_agent.net import free_port

# vLLM 0.33's own request/response schemas (pydantic model_json_schema), vendored from shared/.
PROTOCOL = Path(__file__).parent / "data" / "vllm-0.33-protocol"
VOCAB = 512


def _schema(name: str) -> dict[str, Any]:
    path = PROTOCOL / f"{name}.schema.json"
    return json.loads(path.read_text())


def _completion(
    token_ids: list[int],
    logprobs: list[float],
    top: list[dict[str, float]] | None,
    *,
    finish_reason: str = "stop",
    versions: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A vLLM CompletionResponse body."""
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 0,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "text": "x" * len(token_ids),
                "token_ids": token_ids,
                "finish_reason": finish_reason,
                "logprobs": {
                    "tokens": [f"token_id:{t}" for t in token_ids],
                    "token_logprobs": logprobs,
                    "top_logprobs": top,
                    "text_offset": list(range(len(token_ids))),
                },
                "weight_versions": versions,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": len(token_ids), "total_tokens": 5},
    }


OK_BODY = _completion([7, 9], [-0.5, -1.0], None)


class ScriptedServer:
    """A real HTTP server that answers each POST with the next scripted action.

    Actions: ``(status, body)`` to answer, or ``"close"`` to drop the connection unanswered.
    The last action repeats once the script runs out. Received JSON bodies are recorded.
    """

    def __init__(self, script: list[tuple[int, Any] | str]) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                server.requests.append(json.loads(self.rfile.read(length)))
                server.headers.append(dict(self.headers))
                index = min(len(server.requests), len(server.script)) - 1
                action = server.script[index]
                if action == "close":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                assert not isinstance(action, str)
                status, body = action
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture(name="free_port")
def free_port_fixture() -> int:
    return free_port()


def _backend(url: str, **overrides: Any) -> HttpBackend:
    fields: dict[str, Any] = {"base_url": url, "model": "m", "max_retries": 2, "backoff_s": 0.01}
    fields.update(overrides)
    return HttpBackend(HttpBackendConfig(**fields), vocab_size=VOCAB)


# -- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("topk", SamplingParams()),
        ("topk", SamplingParams(max_tokens=1, temperature=0.0)),
        ("surprisal", SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=123)),
        ("topk", SamplingParams(top_k=0, seed=0, stop_token_ids=(3, 4))),
        ("surprisal", SamplingParams(max_tokens=4096, temperature=1.5, seed=-5)),
    ],
)
def test_every_request_body_validates_against_vllm_completion_request(
    estimator: str, params: SamplingParams
) -> None:
    backend = _backend("http://127.0.0.1:1", entropy_estimator=estimator, top_logprobs=5)
    body = backend.build_completion_request([1, 2, 511], params)
    jsonschema.validate(body, _schema("CompletionRequest"))
    assert body["prompt"] == [1, 2, 511]
    assert body["logprobs"] == (5 if estimator == "topk" else 0)
    assert body["return_token_ids"] and body["return_tokens_as_token_ids"]
    assert body["return_weight_versions"] and body["include_stop_str_in_output"]
    assert body["skip_special_tokens"] is False
    assert body["top_k"] == (params.top_k if params.top_k > 0 else -1)
    assert body["stop_token_ids"] == list(params.stop_token_ids)
    assert ("seed" in body) == (params.seed is not None)


def test_sent_bodies_validate_and_carry_the_api_key() -> None:
    with ScriptedServer([(200, OK_BODY)]) as server:
        backend = _backend(server.url, api_key="sekret", entropy_estimator="surprisal")

        async def run() -> None:
            await backend.generate([1, 2, 3], SamplingParams(max_tokens=2, seed=1))
            await backend.aclose()

        asyncio.run(run())
    jsonschema.validate(server.requests[0], _schema("CompletionRequest"))
    assert server.headers[0]["Authorization"] == "Bearer sekret"


@pytest.mark.parametrize(
    "fields",
    [
        {"base_url": "127.0.0.1:8000"},
        {"model": ""},
        {"top_logprobs": 0},
        {"entropy_estimator": "exact"},
        {"timeout_s": 0},
        {"max_retries": -1},
        {"backoff_s": -1.0},
    ],
)
def test_invalid_config_raises_config_error(fields: dict[str, Any]) -> None:
    base: dict[str, Any] = {"base_url": "http://h:1", "model": "m"}
    with pytest.raises(ConfigError):
        HttpBackendConfig(**{**base, **fields})


@pytest.mark.parametrize("url", ["http://h:1", "http://h:1/", "http://h:1/v1", "http://h:1/v1/"])
def test_base_url_is_taken_with_or_without_v1(url: str) -> None:
    assert HttpBackendConfig(base_url=url, model="m").base_url == "http://h:1"


# -- response parsing -------------------------------------------------------------------------


async def test_surprisal_estimator_reports_minus_logprob_and_server_version() -> None:
    body = _completion(
        [7, 9, 2], [-0.5, -1.25, -0.0], None, versions=[{"version": "4", "start": 0, "end": 3}]
    )
    with ScriptedServer([(200, body)]) as server:
        backend = _backend(server.url, entropy_estimator="surprisal")
        gen = await backend.generate([1, 2, 3], SamplingParams(max_tokens=3))
        await backend.aclose()
    assert gen.token_ids == (7, 9, 2)
    assert gen.prompt_token_ids == (1, 2, 3)
    assert gen.logprobs == (-0.5, -1.25, -0.0)
    assert gen.entropies == (0.5, 1.25, 0.0)
    assert gen.entropy_kind == "surprisal" and gen.entropy_lower is None
    assert gen.finish_reason == "stop"
    assert gen.policy_version == 4 and backend.policy_version == 4


async def test_topk_estimator_bounds_come_from_the_k_largest_alternatives() -> None:
    # Position 0: two tokens hold all the mass (p = 0.5 each): entropy exactly log 2.
    # Position 1: vLLM added the sampled token (rank > k) as a third entry; it must be dropped.
    half = math.log(0.5)
    top = [
        {"token_id:7": half, "token_id:8": half},
        {"token_id:9": math.log(0.6), "token_id:10": math.log(0.3), "token_id:11": math.log(0.01)},
    ]
    body = _completion(
        [7, 11],
        [half, math.log(0.01)],
        top,
        finish_reason="length",
        versions=[{"version": "v2", "start": 0, "end": 1}, {"version": "v3", "start": 1, "end": 2}],
    )
    with ScriptedServer([(200, body)]) as server:
        backend = _backend(server.url, top_logprobs=2, initial_policy_version=1)
        gen = await backend.generate([1], SamplingParams(max_tokens=2))
        await backend.aclose()
    assert gen.entropy_kind == "topk" and gen.finish_reason == "length"
    assert gen.entropy_lower is not None and gen.entropy_upper is not None
    assert gen.entropy_lower[0] == pytest.approx(math.log(2))
    assert gen.entropy_upper[0] == pytest.approx(math.log(2))
    # With the top-2 (0.6, 0.3) the tail r = 0.1 is capped at 0.3 per token: one token of 0.1.
    h_top = -(0.6 * math.log(0.6) + 0.3 * math.log(0.3))
    assert gen.entropy_lower[1] == pytest.approx(h_top - 0.1 * math.log(0.1))
    assert gen.entropy_upper[1] == pytest.approx(h_top + 0.1 * math.log((VOCAB - 2) / 0.1))
    # A generation straddling a swap belongs to its oldest version; the backend moves on.
    assert gen.policy_version == 2 and backend.policy_version == 3


async def test_missing_token_ids_or_keys_not_token_ids_raise_backend_error() -> None:
    no_ids = _completion([7], [-0.1], None)
    no_ids["choices"][0]["token_ids"] = None
    text_keys = _completion([7], [-0.1], [{"a": -0.1}])
    with ScriptedServer([(200, no_ids), (200, text_keys)]) as server:
        backend = _backend(server.url)
        with pytest.raises(BackendError, match="token_ids"):
            await backend.generate([1], SamplingParams(max_tokens=1))
        with pytest.raises(BackendError, match="return_tokens_as_token_ids"):
            await backend.generate([1], SamplingParams(max_tokens=1))
        await backend.aclose()


# -- retries and errors -----------------------------------------------------------------------


async def test_retries_503_twice_then_succeeds() -> None:
    unavailable = (503, {"error": {"message": "warming up", "type": "x", "code": 503}})
    with ScriptedServer([unavailable, unavailable, (200, OK_BODY)]) as server:
        backend = _backend(server.url, entropy_estimator="surprisal")
        gen = await backend.generate([1, 2], SamplingParams(max_tokens=2))
        await backend.aclose()
    assert len(server.requests) == 3
    assert gen.token_ids == (7, 9)


async def test_retries_a_dropped_connection() -> None:
    with ScriptedServer(["close", (200, OK_BODY)]) as server:
        backend = _backend(server.url, entropy_estimator="surprisal")
        gen = await backend.generate([1, 2], SamplingParams(max_tokens=2))
        await backend.aclose()
    assert len(server.requests) == 2
    assert gen.logprobs == (-0.5, -1.0)


async def test_persistent_5xx_gives_up_after_max_retries_with_a_helpful_error() -> None:
    with ScriptedServer([(500, {"error": {"message": "boom"}})]) as server:
        backend = _backend(server.url, max_retries=2)
        with pytest.raises(BackendUnavailableError) as info:
            await backend.generate([1], SamplingParams(max_tokens=1))
        await backend.aclose()
    assert len(server.requests) == 3
    message = str(info.value)
    assert server.url in message and "'m'" in message and "boom" in message
    assert "--max-logprobs >= 20" in message


async def test_4xx_is_not_retried_and_carries_the_server_message() -> None:
    bad = (400, {"error": {"message": "logprobs 20 > max 5", "type": "BadRequestError"}})
    with ScriptedServer([bad]) as server:
        backend = _backend(server.url)
        with pytest.raises(BackendError, match="logprobs 20 > max 5") as info:
            await backend.generate([1], SamplingParams(max_tokens=1))
        await backend.aclose()
    assert not isinstance(info.value, BackendUnavailableError)
    assert len(server.requests) == 1


async def test_nothing_listening_raises_backend_unavailable_naming_the_url(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}"
    backend = _backend(url, max_retries=1, model="tepo-default")
    with pytest.raises(BackendUnavailableError) as info:
        await backend.generate([1], SamplingParams(max_tokens=1))
    await backend.aclose()
    message = str(info.value)
    assert url in message and "tepo-default" in message and "tepo-agent serve" in message
