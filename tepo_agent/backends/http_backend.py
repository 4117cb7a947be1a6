"""The HTTP backend: token-id prompts to a vLLM (or ``tepo-agent serve``) OpenAI server.

:class:`HttpBackend` implements :class:`~tepo_agent.backends.base.Backend` over
``POST {base_url}/v1/completions``. The prompt is sent as token ids (the server never
re-tokenizes), and vLLM's extensions bring back what a token-exact trajectory needs:

- ``return_token_ids``: the sampled ids (``choices[0].token_ids``), stop token included;
- ``logprobs=k`` + ``return_tokens_as_token_ids``: the sampled token's raw logprob and the top-k
  alternatives keyed ``"token_id:N"`` (unambiguous even for byte tokens that are not valid text);
- ``return_weight_versions``: which weight version sampled which output tokens.

Entropy (:mod:`tepo_agent.backends.http_entropy`): the default ``"auto"`` asks a vLLM server
that runs tepo-agent's plugin (``tepo-agent vllm serve``) for its exact per-token entropies and
behaviour logprobs (``"vllm_xargs": {"tepo_entropy": 1}``, no ``logprobs``: 0.93-0.97x of
vLLM's no-logprob throughput), reads ``tepo-agent serve``'s exact entropies, and otherwise falls
back to an estimate (logprobs cost throughput, see docs/architecture.md, invariant 3): ``"topk"``
asks for ``top_logprobs`` alternatives and bounds the entropy with the tail mass,
``"surprisal"`` asks only for the sampled token's logprob (``logprobs=0``) and reports
``-log p(x_t)``, whose mean over a turn is an unbiased estimate of the turn entropy at
temperature 1. Each generation's ``entropy_kind`` says which source produced its entropies.

Connection errors, timeouts and 5xx answers are retried with exponential backoff; after the last
retry :class:`~tepo_agent.errors.BackendUnavailableError` says what to check. A 4xx answer is a
bad request and raises :class:`~tepo_agent.errors.BackendError` with the server's message at once.

Several serving replicas (``base_url`` a list, :mod:`tepo_agent.backends.replicas`): each request
goes to the live replica with the fewest requests in flight; a replica that fails is taken out
and probed (``GET /health``) with backoff until it answers, and the request is retried on another
replica at once. Requests are not streamed (``"stream": false``): a replica that dies mid-request
has delivered nothing, so the retry samples the whole completion afresh and nothing is lost or
duplicated. Each generation names the replica that sampled it (``Generation.replica``, stored
per turn); :meth:`HttpBackend.replica_status` reports the routing state.

Usage::

    config = HttpBackendConfig("http://127.0.0.1:8000", model="tepo-default")
    backend = HttpBackend(config, vocab_size=512)
    gen = await backend.generate(prompt_ids, SamplingParams(max_tokens=64))
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx

from tepo_agent.backends.base import EntropyKind, Generation, SamplingParams
from tepo_agent.backends.http_config import HttpBackendConfig, server_root
from tepo_agent.backends.http_entropy import (
    Bounds,
    EntropyEstimator,
    FallbackEstimator,
    estimated_entropies,
    plugin_entropies,
    response_logprobs,
    sampled_token_ids,
    server_entropies,
)
from tepo_agent.backends.replicas import Replica, ReplicaPool, ReplicaStatus
from tepo_agent.errors import BackendError, BackendUnavailableError, ConfigError
from tepo_agent.vllm.plugin import OPT_IN_KEY

# What "auto" has learnt about the server: nothing yet, or which source it provides.
_AutoSource = Literal["unknown", "plugin", "server", "fallback"]
_VERSION_LABEL = re.compile(r"(\d+)$")


def served_models(
    base_url: str, *, api_key: str | None = None, timeout_s: float = 10.0
) -> list[str]:
    """The model names a vLLM/OpenAI-compatible server lists at ``GET /v1/models``."""
    url = f"{server_root(base_url)}/v1/models"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise BackendUnavailableError(
            f"cannot reach {url} ({type(exc).__name__}: {exc}); is the server running there?"
        ) from exc
    if response.status_code != 200:
        status = response.status_code
        raise BackendError(f"{url} answered HTTP {status}: {_error_message(response)}")
    body = response.json()
    data = body.get("data") if isinstance(body, dict) else None
    return [str(m["id"]) for m in data or [] if isinstance(m, dict) and "id" in m]


class _Retryable(Exception):
    """One attempt failed in a way worth retrying (internal)."""


class HttpBackend:
    """A :class:`~tepo_agent.backends.base.Backend` over vLLM's OpenAI completions API.

    Concurrent ``generate`` calls are concurrent HTTP requests; the server batches them.
    """

    def __init__(
        self,
        config: HttpBackendConfig,
        *,
        vocab_size: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if vocab_size < 2:
            raise ConfigError(f"vocab_size must be >= 2, got {vocab_size}")
        self.config = config
        self._vocab_size = vocab_size
        self._policy_version = config.initial_policy_version
        self._auto: _AutoSource = "unknown"
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )
        self._pool = ReplicaPool(
            config.base_urls, backoff_s=config.backoff_s, max_backoff_s=config.max_backoff_s
        )

    @property
    def policy_version(self) -> int:
        """The newest weight version the server reported (the configured one until then)."""
        return self._policy_version

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def entropy_source(self) -> str:
        """Where the entropies come from: the configured estimator, or for ``"auto"`` what the
        server turned out to provide (``unknown`` before the first answer)."""
        return (
            self._auto if self.config.entropy_estimator == "auto" else self.config.entropy_estimator
        )

    @property
    def url(self) -> str:
        return f"{self.config.base_url}/v1/completions"

    def replica_status(self) -> list[ReplicaStatus]:
        """Each replica's routing state: up or out, requests in flight, answered, failures."""
        return self._pool.status()

    def build_completion_request(
        self, prompt_token_ids: Sequence[int], params: SamplingParams
    ) -> dict[str, Any]:
        """The exact JSON body sent to ``/v1/completions`` (valid vLLM ``CompletionRequest``)."""
        if not prompt_token_ids:
            raise BackendError("the prompt is empty: render at least one token id")
        body: dict[str, Any] = {
            "model": self.config.model,
            "prompt": [int(t) for t in prompt_token_ids],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            # vLLM: -1 (or 0) disables top-k.
            "top_k": params.top_k if params.top_k > 0 else -1,
            "stop_token_ids": [int(t) for t in params.stop_token_ids],
            "return_token_ids": True,
            "return_tokens_as_token_ids": True,
            "return_weight_versions": True,
            # Keep special tokens (the end-of-turn token) so text and ids agree, and keep the
            # stop token in the output so the trajectory stays token-exact.
            "skip_special_tokens": False,
            "include_stop_str_in_output": True,
            "add_special_tokens": False,
            "n": 1,
            "stream": False,
        }
        if params.seed is not None:
            body["seed"] = params.seed
        source = self.entropy_source
        if source in ("plugin", "unknown"):
            body["vllm_xargs"] = {OPT_IN_KEY: 1}
        if source == "server":  # exact entropies from the server: the sampled logprob suffices
            body["logprobs"] = 0
        elif source != "plugin":  # the plugin returns the behaviour logprobs itself
            body["logprobs"] = self.config.logprobs_k
        return body

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        body = self.build_completion_request(prompt_token_ids, params)
        replica, payload = await self._post_with_retries("/v1/completions", body)
        generation = self._parse_completion(tuple(body["prompt"]), payload, replica)
        if generation is None:  # "auto": the plugin went away (a server restarted without it)
            self._auto = "fallback"
            body = self.build_completion_request(prompt_token_ids, params)
            replica, payload = await self._post_with_retries("/v1/completions", body)
            generation = self._parse_completion(tuple(body["prompt"]), payload, replica)
            assert generation is not None  # a fallback request always carries logprobs
        return generation

    async def aclose(self) -> None:
        await self._pool.stop_probes()
        await self._client.aclose()

    # -- transport -------------------------------------------------------------------------

    async def _post_with_retries(self, path: str, body: Mapping[str, Any]) -> tuple[str, dict]:
        """(the replica that answered, its JSON body). Each round tries every live replica
        once (a failed one is taken out at once); rounds are spaced by the backoff."""
        rounds = self.config.max_retries + 1
        problems: list[str] = []
        for round_ in range(rounds):
            if round_:
                await asyncio.sleep(self.config.backoff_s * 2 ** (round_ - 1))
            self._pool.start_probes(self._client)
            tried: set[str] = set()
            while (replica := self._next_replica(tried)) is not None:
                tried.add(replica.url)
                try:
                    with self._pool.in_flight(replica):
                        payload = await self._post_once(replica.url, path, body)
                except _Retryable as exc:
                    self._pool.failed(replica, str(exc))
                    problems.append(
                        f"{replica.url}: {exc}" if len(self._pool.replicas) > 1 else str(exc)
                    )
                    continue
                self._pool.answered(replica)
                return replica.url, payload
        where = self.config.base_url
        head = (
            f"{where}{path} did not answer"
            if len(self._pool.replicas) == 1
            else f"none of the replicas {where} answered {path}"
        )
        raise BackendUnavailableError(
            f"{head} for model {self.config.model!r} after "
            f"{len(problems)} attempt(s) in {rounds} round(s); last problem(s): "
            f"{'; '.join(problems[-len(self._pool.replicas) :])}. "
            f"Check: is `vllm serve` / `tepo-agent serve` running at {where}? Does it serve "
            f"{self.config.model!r} (GET /v1/models)? Was it started with --max-logprobs >= "
            f"{self.config.logprobs_k}?"
        )

    def _next_replica(self, tried: set[str]) -> Replica | None:
        """The least-loaded live replica not tried yet; when none is live and none was tried
        this round, the one out of service that is due soonest (the request probes it)."""
        replica = self._pool.choose(exclude=tried)
        if replica is None and not tried:
            replica = self._pool.soonest_down(exclude=tried)
        return replica

    async def _post_once(self, root: str, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(f"{root}{path}", json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code >= 400:
            raise BackendError(
                f"{root}{path} rejected the request for model "
                f"{self.config.model!r} with HTTP {response.status_code}: "
                f"{_error_message(response)}"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise BackendError(
                f"{root}{path} answered HTTP {response.status_code} with a body "
                f"that is not JSON: {response.text[:200]!r}"
            ) from exc
        if not isinstance(payload, dict):
            raise BackendError(f"{root}{path} answered a non-object JSON body")
        return payload

    # -- response parsing ------------------------------------------------------------------

    def _parse_completion(
        self, prompt_token_ids: tuple[int, ...], payload: Mapping[str, Any], replica: str
    ) -> Generation | None:
        """The generation, or None when ``"auto"`` asked the plugin alone and it did not answer."""
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendError(f"the completion response has no choices: {_short(payload)}")
        choice = choices[0]
        token_ids = sampled_token_ids(choice)
        finish_reason = choice.get("finish_reason")
        if finish_reason not in ("stop", "length"):
            raise BackendError(
                f"the generation ended with finish_reason={finish_reason!r} (expected 'stop' or "
                f"'length'); the server aborted it, see its log"
            )
        found = self._entropies(payload, choice, token_ids)
        if found is None:
            return None
        logprobs, entropies, kind, bounds = found
        return Generation(
            prompt_token_ids=prompt_token_ids,
            token_ids=token_ids,
            logprobs=logprobs,
            entropies=entropies,
            entropy_kind=kind,
            finish_reason=finish_reason,
            policy_version=self._generation_version(choice.get("weight_versions")),
            entropy_lower=bounds[0] if bounds else None,
            entropy_upper=bounds[1] if bounds else None,
            replica=replica,
        )

    def _entropies(
        self, payload: Mapping[str, Any], choice: Mapping[str, Any], token_ids: tuple[int, ...]
    ) -> tuple[tuple[float, ...], tuple[float, ...], EntropyKind, Bounds | None] | None:
        """(behaviour logprobs, entropies, their kind, top-k bounds) by the configured estimator;
        None when ``"auto"`` relied on the plugin and the answer has neither its values nor
        logprobs."""
        estimator, n = self.config.entropy_estimator, len(token_ids)
        if estimator in ("auto", "plugin"):
            exact = plugin_entropies(payload, n)
            if exact is not None:
                self._auto = "plugin"
                return exact[1], exact[0], "exact", None
            if estimator == "plugin":
                raise BackendError(
                    f"{self.url} returned no plugin entropies (kv_transfer_params.tepo_entropy): "
                    "serve with `tepo-agent vllm serve` (tepo-agent's vLLM plugin), or use "
                    "entropy_estimator='auto'"
                )
        logprobs = response_logprobs(choice, n)
        if logprobs is None:
            if estimator == "auto" and self._auto == "plugin":
                return None
            raise BackendError(
                f"the server returned {n} token ids but no token logprobs; it must honour "
                f"logprobs={self.config.logprobs_k}"
            )
        if estimator in ("auto", "server"):
            exact_h = server_entropies(choice, n)
            if exact_h is not None:
                self._auto = "server"
                return logprobs, exact_h, "exact", None
            if estimator == "server":
                raise BackendError(
                    f"{self.url} returned no exact per-token entropies (choices[0].entropies); "
                    "entropy_estimator='server' needs tepo-agent serve, use 'auto' with vLLM"
                )
            self._auto = "fallback"
            estimator = self.config.fallback_estimator
        assert estimator in ("topk", "surprisal")
        entropies, kind, bounds = estimated_entropies(
            estimator, choice, logprobs, self._vocab_size, self.config.top_logprobs
        )
        return logprobs, entropies, kind, bounds

    def _generation_version(self, spans: Any) -> int:
        """The version a generation is attributed to, updating :attr:`policy_version`.

        vLLM reports half-open spans ``[{"version", "start", "end"}]`` of output tokens per
        weight version (labels are strings; ours are integers, ``"7"`` or ``"v7"``). A
        generation that straddles a swap is attributed to its *oldest* version, so staleness is
        never under-estimated; the behaviour logprobs are per token either way.
        """
        parsed = [_parse_version(span.get("version")) for span in spans or ()]
        versions = [v for v in parsed if v is not None]
        if not versions:
            return self._policy_version
        self._policy_version = max(self._policy_version, versions[-1])
        return min(versions)


def _parse_version(label: Any) -> int | None:
    if isinstance(label, int):
        return label
    if isinstance(label, str):
        match = _VERSION_LABEL.search(label)
        if match:
            return int(match.group(1))
    return None


def _error_message(response: httpx.Response) -> str:
    """The server's error message from an OpenAI (``{"error": {"message"}}``) or FastAPI body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if isinstance(error, str):
            return error
        if "message" in body:
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


def _short(payload: Any) -> str:
    text = repr(payload)
    return text if len(text) <= 200 else text[:200] + "..."


__all__ = [
    "EntropyEstimator",
    "FallbackEstimator",
    "HttpBackend",
    "HttpBackendConfig",
    "served_models",
    "server_root",
]
