"""Hostile clients against ``tepo-agent serve`` on a real uvicorn server on 127.0.0.1.

Junk, oversize, stalled and unauthenticated requests, traversal in names and paths, and
schemathesis fuzzing through the published OpenAPI document: no 5xx, every refusal a 4xx whose
body names the problem, and the server keeps answering normal requests afterwards."""

from __future__ import annotations

import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from test_serve import SMALL, LiveServer

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.chat.format import ChatFormat
from tepo_agent.model.default import init_model
from tepo_agent.server.app import create_app
from tepo_agent.server.validation import ServeLimits

KEY = "hostile-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 64 * 1024
NEGATIVE = schemathesis.GenerationMode.NEGATIVE
POST_ROUTES = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/load_lora_adapter",
    "/v1/unload_lora_adapter",
    "/v1/reload_weights",
    "/v1/fetch_weights",
]


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("weights")


@pytest.fixture(scope="module")
def live(
    tmp_path_factory: pytest.TempPathFactory, weights_root: Path
) -> Iterator[tuple[str, Path]]:
    model_dir = init_model(tmp_path_factory.mktemp("model") / "tiny", seed=0, config=SMALL)
    backend = TransformersBackend.from_pretrained(model_dir, device="cpu", max_batch_size=8)
    limits = ServeLimits(max_body_bytes=LIMIT, body_timeout_s=1.0, weights_root=weights_root)
    app = create_app(
        backend,
        ChatFormat.from_pretrained(model_dir),
        model_name="tiny",
        api_key=KEY,
        limits=limits,
    )
    with LiveServer(app) as server:
        yield server.url, model_dir
    backend.close()


@pytest.fixture
def client(live: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live[0], headers=AUTH, timeout=60) as c:
        yield c


def assert_refused(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"] and error["code"] == status


def assert_still_serves(client: httpx.Client) -> None:
    body = {"prompt": [1, 2, 3], "max_tokens": 2}
    assert client.post("/v1/completions", json=body).status_code == 200


def test_every_v1_route_needs_the_key(live: tuple[str, Path]) -> None:
    with httpx.Client(base_url=live[0], timeout=30) as anonymous:
        assert anonymous.get("/health").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            assert_refused(anonymous.get("/v1/models", headers=headers), 401, "API key")
            for route in POST_ROUTES:
                answer = anonymous.post(route, json={}, headers=headers)
                assert_refused(answer, 401, "API key")


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "over the limit"),
        (b"[" * 30_000 + b"]" * 30_000, "nested too deeply"),
        (b'{"prompt": [1], "temperature": NaN}', "temperature"),
        (b'{"prompt": [1], "temperature": Infinity}', "temperature"),
        (b'{"prompt": [1], "seed": 100000000000000000000000}', "seed"),
        (b'{"prompt": "x\\ud800"}', "lone surrogate"),
        (b'{"prompt": [-1]}', "outside the vocabulary"),
        (b'{"prompt": 7}', "invalid CompletionRequest"),
        (b"null", "invalid CompletionRequest"),
    ],
)
def test_junk_bodies_are_400s_with_a_message(
    client: httpx.Client, content: bytes, words: str
) -> None:
    answer = client.post("/v1/completions", content=content)
    status = 413 if words == "over the limit" else 400
    assert_refused(answer, status, words)


def test_chat_messages_of_the_wrong_shape_are_400s(client: httpx.Client) -> None:
    for messages in (
        b'[{"content": "no role"}]',
        b'[{"role": "user", "content": "\\ud800"}]',
        b'["x"]',
        b'[{"role": "user", "content": {"nested": 1}}]',
        b'[{"role": "tool", "content": null}]',
    ):
        answer = client.post("/v1/chat/completions", content=b'{"messages": ' + messages + b"}")
        assert 400 <= answer.status_code < 500, answer.text
        assert answer.json()["error"]["message"]
    assert_still_serves(client)


def test_huge_bodies_are_413_declared_or_chunked(client: httpx.Client) -> None:
    big = b'{"prompt": [' + b"1," * LIMIT + b"1]}"
    assert_refused(client.post("/v1/completions", content=big), 413, f"limit of {LIMIT}")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while received
        for _ in range(2 * LIMIT // 1024):
            yield b" " * 1024

    assert_refused(client.post("/v1/completions", content=chunks()), 413, "over the limit")
    assert_still_serves(client)


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_answer(conn: socket.socket) -> str:
    """Everything the server sends until it closes the connection (headers and body may come
    in separate segments)."""
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_a_stalled_body_gets_408_and_slow_clients_block_no_one(
    live: tuple[str, Path], client: httpx.Client
) -> None:
    stalled = raw_connection(live[0])
    stalled.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {KEY}\r\nContent-Length: 100\r\n\r\n".encode()
        + b'{"prompt": '
    )
    # 50 slowloris clients dribbling header bytes hold connections, not the server
    slow = [raw_connection(live[0]) for _ in range(50)]
    for conn in slow:
        conn.sendall(b"POST /v1/completions HTTP/1.1\r\nHo")
    started = time.monotonic()
    assert_still_serves(client)
    assert time.monotonic() - started < 30  # not held back by them (generous: shared cores)
    answer = read_answer(stalled)
    assert answer.startswith("HTTP/1.1 408") and "stalled for 1 s" in answer
    for conn in [stalled, *slow]:
        conn.close()


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"lora_name": "../../etc", "lora_path": "x"}, "lora_name must be"),
        ({"lora_name": "a/b", "lora_path": "x"}, "lora_name must be"),
        ({"lora_name": "v1", "lora_path": "/etc"}, "outside the server's weights directory"),
        ({"lora_name": "v1", "lora_path": "{root}/../../etc"}, "outside the server's weights"),
        ({"lora_name": "v1", "lora_path": "{root}/escape"}, "outside the server's weights"),
        ({"lora_name": "v1", "lora_path": "{root}/x\x00y"}, "NUL"),
        ({"lora_name": "v1", "lora_path": "{root}/missing"}, "not a directory"),
        ({"weights_path": "{root}/../.."}, "outside the server's weights directory"),
        ({"weights_path": "{root}/escape"}, "outside the server's weights directory"),
        ({"weights_path": "{root}"}, "safetensors"),  # inside, but not a model: a clear 400
    ],
)
def test_traversal_in_names_and_paths_is_refused(
    client: httpx.Client, weights_root: Path, body: dict[str, str], words: str
) -> None:
    escape = weights_root / "escape"
    if not escape.exists():
        escape.symlink_to("/etc")  # a symlink inside the root that leads out of it
    body = {k: v.replace("{root}", str(weights_root)) for k, v in body.items()}
    route = "/v1/reload_weights" if "weights_path" in body else "/v1/load_lora_adapter"
    assert_refused(client.post(route, json=body), 400, words)
    assert client.get("/v1/models").json()["data"][0]["policy_version"] == 0  # nothing loaded


def test_schemathesis_finds_no_5xx_on_any_route(live: tuple[str, Path]) -> None:
    schema = schemathesis.openapi.from_url(f"{live[0]}/openapi.json")
    sent: Counter[str] = Counter()
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert paths >= {"/health", "/v1/models", *POST_ROUTES}
    for operation in operations:
        if operation.path in POST_ROUTES:  # the published body, not an empty one
            assert operation.body, f"{operation.path} has no request body in the OpenAPI document"
        for mode in (schemathesis.GenerationMode.POSITIVE, NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=8,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def exercise(case: Any) -> None:
                response = case.call(base_url=live[0], headers=AUTH, timeout=60)
                sent[case.operation.path] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{case.method} {case.path} {case.body!r:.200} -> "
                        f"{response.status_code} {response.text[:200]}"
                    )
                elif response.status_code >= 400:
                    message = response.json()["error"]["message"]
                    assert message, response.text

            try:
                exercise()
            except Unsatisfiable:  # nothing invalid to send to a route without inputs
                assert mode is NEGATIVE and not operation.body, operation.path
    assert not failures, "\n".join(failures)
    assert set(sent) == paths, sent  # every route got cases; the routes with a body, many
    assert all(sent[route] >= 2 * 8 for route in POST_ROUTES), sent
