"""The HTTP backend: token-id prompts to a vLLM (or ``tepo-agent serve``) OpenAI server.

:class:`HttpBackend` implements :class:`~tepo_agent.backends.base.Backend` over
``POST {base_url}/v1/completions``. The prompt is sent as token ids (the server never
re-tokenizes), and vLLM's extensions bring back what a token-exact trajectory needs:

- ``return_token_ids``: the sampled ids (``choices[0].token_ids``), stop token included;
- ``logprobs=k`` + ``return_tokens_as_token_ids``: the sampled token's raw logprob and the top-k
  alternatives keyed ``"token_id:N"`` (unambiguous even for byte tokens that are not valid text);
- ``return_weight_versions``: which weight version sampled which output tokens.

Entropy over HTTP is an estimate (logprobs cost throughput, see docs/architecture.md, invariant 3):
``"topk"`` asks for ``top_logprobs`` alternatives and bounds the entropy with the tail mass,
``"surprisal"`` asks only for the sampled token's logprob (``logprobs=0``) and reports
``-log p(x_t)``, whose mean over a turn is an unbiased estimate of the turn entropy at
temperature 1.

Connection errors, timeouts and 5xx answers are retried with exponential backoff; after the last
retry :class:`~tepo_agent.errors.BackendUnavailableError` says what to check. A 4xx answer is a
bad request and raises :class:`~tepo_agent.errors.BackendError` with the server's message at once.

Usage::

    config = HttpBackendConfig("http://127.0.0.1:8000", model="tepo-default")
    backend = HttpBackend(config, vocab_size=512)
    gen = await backend.generate(prompt_ids, SamplingParams(max_tokens=64))
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from tepo_agent.backends.base import EntropyKind, Generation, SamplingParams
from tepo_agent.errors import BackendError, BackendUnavailableError, ConfigError

EntropyEstimator = Literal["topk", "surprisal", "server"]

_TOKEN_ID_KEY = re.compile(r"^token_id:(\d+)$")
_VERSION_LABEL = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class HttpBackendConfig:
    """Where the server is and how to talk to it.

    Attributes:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` or ``http://127.0.0.1:8000/v1`` (what
            OpenAI clients take); a trailing ``/v1`` is dropped, the backend adds the paths.
        model: The served model name (or a LoRA adapter's ``lora_name``) sent as ``model``.
        api_key: Sent as ``Authorization: Bearer <key>`` when set.
        entropy_estimator: ``"topk"`` (estimate + bounds from ``top_logprobs`` alternatives;
            costs throughput), ``"surprisal"`` (the sampled token's ``-log p``; cheapest), or
            ``"server"``: the exact per-token entropies the server computes itself
            (``tepo-agent serve``'s ``entropies`` extension field), at the cost of
            ``"surprisal"``; a server that does not return them is an error.
        top_logprobs: k for the ``"topk"`` estimator. vLLM caps it with ``--max-logprobs``
            (default 20).
        timeout_s: Read/write timeout of one request, in seconds (a long generation needs it).
        connect_timeout_s: Timeout to open a connection, in seconds.
        max_retries: Retries after the first attempt on connection errors, timeouts and 5xx.
        backoff_s: First retry delay; each further retry doubles it.
        initial_policy_version: The version reported until the server names one in
            ``weight_versions``.
    """

    base_url: str
    model: str
    api_key: str | None = None
    entropy_estimator: EntropyEstimator = "topk"
    top_logprobs: int = 20
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_retries: int = 3
    backoff_s: float = 0.5
    initial_policy_version: int = 0

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"base_url must start with http:// or https://, got {self.base_url!r}"
            )
        object.__setattr__(self, "base_url", server_root(self.base_url))
        if not self.model:
            raise ConfigError("model must name the served model (see GET /v1/models)")
        if self.entropy_estimator not in ("topk", "surprisal", "server"):
            raise ConfigError(
                "entropy_estimator must be 'topk', 'surprisal' or 'server', got "
                f"{self.entropy_estimator!r}"
            )
        if self.top_logprobs < 1:
            raise ConfigError(f"top_logprobs must be >= 1, got {self.top_logprobs}")
        if not (self.timeout_s > 0 and self.connect_timeout_s > 0):
            raise ConfigError(
                f"timeouts must be > 0 seconds, got timeout_s={self.timeout_s}, "
                f"connect_timeout_s={self.connect_timeout_s}"
            )
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0:
            raise ConfigError(f"backoff_s must be >= 0, got {self.backoff_s}")

    @property
    def logprobs_k(self) -> int:
        """The ``logprobs`` request field: k alternatives, or 0 (sampled token only)."""
        return self.top_logprobs if self.entropy_estimator == "topk" else 0


def server_root(base_url: str) -> str:
    """``http://host:port`` from a URL given with or without a trailing ``/v1``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


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
        headers = {"Authorization": f"Bearer {config.api_key}"} if config.api_key else {}
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(config.timeout_s, connect=config.connect_timeout_s),
            transport=transport,
        )

    @property
    def policy_version(self) -> int:
        """The newest weight version the server reported (the configured one until then)."""
        return self._policy_version

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def url(self) -> str:
        return f"{self.config.base_url.rstrip('/')}/v1/completions"

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
            "logprobs": self.config.logprobs_k,
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
        return body

    async def generate(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> Generation:
        body = self.build_completion_request(prompt_token_ids, params)
        payload = await self._post_with_retries("/v1/completions", body)
        return self._parse_completion(tuple(body["prompt"]), payload)

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- transport -------------------------------------------------------------------------

    async def _post_with_retries(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        attempts = self.config.max_retries + 1
        last_problem = ""
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(self.config.backoff_s * 2 ** (attempt - 1))
            try:
                return await self._post_once(path, body)
            except _Retryable as exc:
                last_problem = str(exc)
        raise BackendUnavailableError(
            f"{self.config.base_url}{path} did not answer for model {self.config.model!r} after "
            f"{attempts} attempt(s); last problem: {last_problem}. Check: is `vllm serve` / "
            f"`tepo-agent serve` running at {self.config.base_url}? Does it serve "
            f"{self.config.model!r} (GET /v1/models)? Was it started with --max-logprobs >= "
            f"{self.config.logprobs_k}?"
        )

    async def _post_once(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        try:
            response = await self._client.post(path, json=body)
        except httpx.TimeoutException as exc:
            raise _Retryable(f"timed out ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500:
            raise _Retryable(f"HTTP {response.status_code}: {_error_message(response)}")
        if response.status_code >= 400:
            raise BackendError(
                f"{self.config.base_url}{path} rejected the request for model "
                f"{self.config.model!r} with HTTP {response.status_code}: "
                f"{_error_message(response)}"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise BackendError(
                f"{self.config.base_url}{path} answered HTTP {response.status_code} with a body "
                f"that is not JSON: {response.text[:200]!r}"
            ) from exc
        if not isinstance(payload, dict):
            raise BackendError(f"{self.config.base_url}{path} answered a non-object JSON body")
        return payload

    # -- response parsing ------------------------------------------------------------------

    def _parse_completion(
        self, prompt_token_ids: tuple[int, ...], payload: Mapping[str, Any]
    ) -> Generation:
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices:
            raise BackendError(f"the completion response has no choices: {_short(payload)}")
        choice = choices[0]
        token_ids, logprobs = self._sampled_tokens(choice)
        finish_reason = choice.get("finish_reason")
        if finish_reason not in ("stop", "length"):
            raise BackendError(
                f"the generation ended with finish_reason={finish_reason!r} (expected 'stop' or "
                f"'length'); the server aborted it, see its log"
            )
        version = self._generation_version(choice.get("weight_versions"))
        entropies, kind, bounds = self._entropies(choice, token_ids, logprobs)
        return Generation(
            prompt_token_ids=prompt_token_ids,
            token_ids=token_ids,
            logprobs=logprobs,
            entropies=entropies,
            entropy_kind=kind,
            finish_reason=finish_reason,
            policy_version=version,
            entropy_lower=bounds[0] if bounds else None,
            entropy_upper=bounds[1] if bounds else None,
        )

    def _sampled_tokens(
        self, choice: Mapping[str, Any]
    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The sampled ids and their behaviour logprobs, checked to pair up."""
        token_ids = choice.get("token_ids")
        if token_ids is None:
            raise BackendError(
                "the server did not return choices[0].token_ids; it must support "
                "return_token_ids (vLLM >= 0.10.2 or tepo-agent serve)"
            )
        token_ids = tuple(int(t) for t in token_ids)
        token_logprobs = (choice.get("logprobs") or {}).get("token_logprobs")
        if token_logprobs is None or len(token_logprobs) != len(token_ids):
            raise BackendError(
                f"the server returned {len(token_ids)} token ids but "
                f"{'no' if token_logprobs is None else len(token_logprobs)} token logprobs; "
                f"it must honour logprobs={self.config.logprobs_k}"
            )
        if any(lp is None for lp in token_logprobs):
            raise BackendError("the server returned a null logprob for a sampled token")
        return token_ids, tuple(float(lp) for lp in token_logprobs)

    def _entropies(
        self, choice: Mapping[str, Any], token_ids: tuple[int, ...], logprobs: tuple[float, ...]
    ) -> tuple[tuple[float, ...], EntropyKind, tuple[tuple[float, ...], tuple[float, ...]] | None]:
        """Per-token entropies by the configured estimator, their kind, and (top-k only) their
        lower and upper bounds."""
        if self.config.entropy_estimator == "server":
            exact = choice.get("entropies")
            if (
                choice.get("entropy_kind") != "exact"
                or not isinstance(exact, list)
                or len(exact) != len(token_ids)
            ):
                raise BackendError(
                    f"{self.url} returned no exact per-token entropies (choices[0].entropies); "
                    "entropy_estimator='server' needs tepo-agent serve, use 'surprisal' or "
                    "'topk' with vLLM"
                )
            return tuple(float(h) for h in exact), "exact", None
        if self.config.entropy_estimator == "surprisal":
            return tuple(-lp for lp in logprobs), "surprisal", None
        top = (choice.get("logprobs") or {}).get("top_logprobs")
        if top is None or len(top) != len(token_ids):
            raise BackendError(
                "the server did not return top_logprobs for every sampled token; start it with "
                f"--max-logprobs >= {self.config.top_logprobs}"
            )
        # Imported here: tepo_agent.entropy needs torch, which a surprisal-only client never loads.
        from tepo_agent.entropy import topk_entropy_bounds

        estimates: list[float] = []
        lowers: list[float] = []
        uppers: list[float] = []
        for position, alternatives in enumerate(top):
            values = _topk_values(alternatives, position, self.config.top_logprobs)
            bounds = topk_entropy_bounds(values, self._vocab_size)
            estimates.append(bounds.estimate)
            lowers.append(bounds.lower)
            uppers.append(bounds.upper)
        return tuple(estimates), "topk", (tuple(lowers), tuple(uppers))

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


def _topk_values(alternatives: Any, position: int, k: int) -> list[float]:
    """The k largest logprobs of one ``top_logprobs`` entry.

    vLLM adds the sampled token to the top-k when it is not among them (k + 1 entries). The bounds
    assume every token left out is no more likely than the smallest one given, which holds for
    the k largest but not for that extra token, so it is dropped (it stays in the tail).
    """
    if not isinstance(alternatives, Mapping) or not alternatives:
        raise BackendError(f"top_logprobs[{position}] is empty; the server ignored logprobs=k")
    values: list[float] = []
    for key, value in alternatives.items():
        if not _TOKEN_ID_KEY.match(str(key)):
            raise BackendError(
                f"top_logprobs[{position}] key {key!r} is not 'token_id:N'; the server ignored "
                "return_tokens_as_token_ids, so byte tokens could collide"
            )
        lp = float(value)
        # JSON has no -inf: vLLM writes -9999.0 (exp() maps it to 0); NaN/inf mean no mass.
        values.append(lp if math.isfinite(lp) else -math.inf)
    return sorted(values, reverse=True)[:k]


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


__all__ = ["EntropyEstimator", "HttpBackend", "HttpBackendConfig"]
