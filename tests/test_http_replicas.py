"""HttpBackend over several replicas: least-outstanding routing, failover, probes with backoff.

Real HTTP servers on 127.0.0.1 play scripted vLLM answers (tests/test_replicas_serve.py runs two
real ``tepo-agent serve`` processes).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tepo_agent.backends.base import SamplingParams
from tepo_agent.backends.http_backend import HttpBackend, HttpBackendConfig
from tepo_agent.backends.replicas import ReplicaPool
from tepo_agent.errors import BackendUnavailableError, ConfigError

VOCAB = 512
OK_BODY = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 0,
    "model": "m",
    "choices": [
        {
            "index": 0,
            "text": "xy",
            "token_ids": [7, 9],
            "finish_reason": "stop",
            "logprobs": {
                "tokens": ["token_id:7", "token_id:9"],
                "token_logprobs": [-0.5, -1.0],
                "top_logprobs": None,
                "text_offset": [0, 1],
            },
            "weight_versions": [{"version": "3", "start": 0, "end": 2}],
        }
    ],
}


class Replica:
    """A real HTTP server: POST answers by ``mode`` ("ok", "close": drop the connection, "503"),
    after ``delay_s``; GET /health answers ``health`` (200 or 503)."""

    def __init__(self, *, delay_s: float = 0.0) -> None:
        self.mode, self.health, self.delay_s = "ok", 200, delay_s
        self.posts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.health_checks = 0
        self._lock = threading.Lock()
        replica = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                replica.health_checks += 1
                self.send_response(replica.health)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with replica._lock:
                    replica.posts += 1
                    replica.in_flight += 1
                    replica.max_in_flight = max(replica.max_in_flight, replica.in_flight)
                try:
                    time.sleep(replica.delay_s)
                    if replica.mode == "close":
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    status = 503 if replica.mode == "503" else 200
                    body = OK_BODY if status == 200 else {"error": {"message": "overloaded"}}
                    data = json.dumps(body).encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with replica._lock:
                        replica.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def pair() -> Any:
    a, b = Replica(delay_s=0.05), Replica(delay_s=0.05)
    yield a, b
    a.close()
    b.close()


def _backend(urls: list[str], **overrides: Any) -> HttpBackend:
    fields: dict[str, Any] = {
        "base_url": urls,
        "model": "m",
        "entropy_estimator": "surprisal",
        "max_retries": 2,
        "backoff_s": 0.05,
        "max_backoff_s": 0.2,
    }
    return HttpBackend(HttpBackendConfig(**{**fields, **overrides}), vocab_size=VOCAB)


PARAMS = SamplingParams(max_tokens=2)


def test_config_takes_a_list_or_a_comma_separated_string() -> None:
    listed = HttpBackendConfig(base_url=["http://a:1/v1", "http://b:2"], model="m")
    joined = HttpBackendConfig(base_url="http://a:1/v1, http://b:2/", model="m")
    assert listed.base_urls == joined.base_urls == ("http://a:1", "http://b:2")
    assert listed.base_url == joined.base_url == "http://a:1,http://b:2"
    assert HttpBackendConfig(base_url="http://a:1/v1", model="m").base_urls == ("http://a:1",)
    for bad in (["http://a:1", "http://a:1/v1"], [], "ftp://a:1", "http://a:1,"):
        if bad == "http://a:1,":  # a trailing comma is only punctuation
            assert HttpBackendConfig(base_url=bad, model="m").base_urls == ("http://a:1",)
            continue
        with pytest.raises(ConfigError):
            HttpBackendConfig(base_url=bad, model="m")
    with pytest.raises(ConfigError, match="max_backoff_s"):
        HttpBackendConfig(base_url="http://a:1", model="m", backoff_s=2.0, max_backoff_s=1.0)


def test_pool_backoff_doubles_up_to_the_cap_and_a_success_resets_it() -> None:
    now = [100.0]
    pool = ReplicaPool(
        ("http://a", "http://b"), backoff_s=1.0, max_backoff_s=5.0, clock=lambda: now[0]
    )
    a = pool.replicas[0]
    delays = []
    for _ in range(5):
        pool.failed(a, "refused")
        delays.append(a.retry_at - now[0])
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert pool.choose(exclude=set()) is pool.replicas[1]  # a is out
    assert pool.due_for_probe() == []
    now[0] += 5.0
    assert pool.due_for_probe() == [a]
    pool.succeeded(a)
    assert (a.up, a.failures, a.last_error) == (True, 0, None)
    pool.failed(a, "again")
    assert a.retry_at - now[0] == 1.0


async def test_concurrent_requests_spread_by_least_outstanding(pair: Any) -> None:
    a, b = pair
    backend = _backend([a.url, b.url])
    gens = await asyncio.gather(*(backend.generate([1, 2], PARAMS) for _ in range(6)))
    await backend.aclose()
    assert (a.posts, b.posts) == (3, 3)
    assert sorted(g.replica for g in gens) == sorted([a.url] * 3 + [b.url] * 3)
    assert all(g.policy_version == 3 for g in gens)


async def test_a_busy_replica_gets_the_next_request_elsewhere(pair: Any) -> None:
    a, b = pair
    a.delay_s = 0.5
    backend = _backend([a.url, b.url])
    slow = asyncio.ensure_future(backend.generate([1], PARAMS))  # picks a (first on a tie)
    await asyncio.sleep(0.1)
    fast = [await backend.generate([1], PARAMS) for _ in range(3)]  # a has 1 in flight: b
    await slow
    await backend.aclose()
    assert {g.replica for g in fast} == {b.url}
    assert (a.posts, b.posts) == (1, 3)


async def test_a_dropped_request_is_retried_on_the_other_replica_and_the_failed_one_is_out(
    pair: Any,
) -> None:
    a, b = pair
    a.mode = "close"
    backend = _backend([a.url, b.url], backoff_s=5.0, max_backoff_s=10.0)
    gens = [await backend.generate([1], PARAMS) for _ in range(4)]
    status = {s.url: s for s in backend.replica_status()}
    await backend.aclose()
    assert [g.replica for g in gens] == [b.url] * 4
    assert a.posts == 1  # taken out after its failure, not tried again before its probe
    assert b.posts == 4
    assert not status[a.url].up and status[a.url].failures == 1
    assert "RemoteProtocolError" in (status[a.url].last_error or "")
    assert status[b.url].up and status[b.url].answered == 4


async def test_a_failed_replica_comes_back_after_a_health_probe(pair: Any) -> None:
    a, b = pair
    a.mode, a.health = "503", 503
    backend = _backend([a.url, b.url], backoff_s=0.05, max_backoff_s=0.1)
    await backend.generate([1], PARAMS)  # a fails with 503, b answers
    assert a.posts == 1 and not backend.replica_status()[0].up
    await asyncio.sleep(0.12)
    await backend.generate([1], PARAMS)  # starts a probe: a is still sick
    await asyncio.sleep(0.05)
    assert a.health_checks >= 1 and not backend.replica_status()[0].up
    a.mode, a.health = "ok", 200
    deadline = time.monotonic() + 5
    while not backend.replica_status()[0].up and time.monotonic() < deadline:
        await backend.generate([1], PARAMS)  # each request starts the probes that are due
        await asyncio.sleep(0.05)
    assert backend.replica_status()[0].up
    gens = await asyncio.gather(*(backend.generate([1], PARAMS) for _ in range(4)))
    await backend.aclose()
    assert a.url in {g.replica for g in gens}  # routed to again
    assert a.posts == 1 + sum(g.replica == a.url for g in gens)  # probes never POST


async def test_every_replica_down_raises_naming_each(pair: Any) -> None:
    a, b = pair
    a.mode = b.mode = "503"
    backend = _backend([a.url, b.url], max_retries=1, backoff_s=0.01, max_backoff_s=0.02)
    with pytest.raises(BackendUnavailableError) as info:
        await backend.generate([1], PARAMS)
    await backend.aclose()
    message = str(info.value)
    assert a.url in message and b.url in message and "overloaded" in message
    assert a.posts + b.posts >= 3  # both in round 1, the one due soonest in round 2
