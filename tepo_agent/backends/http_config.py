"""How :class:`~tepo_agent.backends.http_backend.HttpBackend` reaches its server: the frozen
configuration (entropy estimator included) and the server-root normalisation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tepo_agent.backends.http_entropy import ESTIMATORS, EntropyEstimator, FallbackEstimator
from tepo_agent.errors import ConfigError


@dataclass(frozen=True)
class HttpBackendConfig:
    """Where the server is and how to talk to it.

    Attributes:
        base_url: The server, e.g. ``http://127.0.0.1:8000`` or ``http://127.0.0.1:8000/v1`` (what
            OpenAI clients take); a trailing ``/v1`` is dropped, the backend adds the paths.
            Several serving replicas: a list of URLs, or one string of comma-separated URLs.
            Each request goes to the replica with the fewest requests in flight; a replica that
            fails (connection error, timeout, 5xx) is taken out, the request is retried on
            another at once, and the failed one is probed (``GET /health``) with backoff
            (``backoff_s`` doubling up to ``max_backoff_s``) until it answers. After
            ``__post_init__`` this field is the comma-joined normalised URLs (one URL: itself)
            and :attr:`base_urls` the tuple of them.
        model: The served model name (or a LoRA adapter's ``lora_name``) sent as ``model``.
        api_key: Sent as ``Authorization: Bearer <key>`` when set.
        entropy_estimator: ``"auto"`` (default): the exact values of tepo-agent's vLLM plugin or
            of ``tepo-agent serve`` when the server has them, else ``fallback_estimator``;
            the first request finds out (it opts in and asks for the fallback's logprobs),
            later ones ask only for what the server provides. ``"plugin"``: the vLLM plugin's
            exact entropies and logprobs, an error without it. ``"topk"`` (estimate + bounds
            from ``top_logprobs`` alternatives; costs throughput), ``"surprisal"`` (the sampled
            token's ``-log p``; cheapest), or ``"server"``: ``tepo-agent serve``'s exact
            entropies (at the cost of ``"surprisal"``), an error without them.
        fallback_estimator: What ``"auto"`` uses on a server without exact entropies.
        top_logprobs: k for the ``"topk"`` estimator. vLLM caps it with ``--max-logprobs``
            (default 20).
        timeout_s: Read/write timeout of one request, in seconds (a long generation needs it).
        connect_timeout_s: Timeout to open a connection, in seconds.
        max_retries: Retries after the first attempt on connection errors, timeouts and 5xx.
        backoff_s: First retry delay; each further retry doubles it. With several replicas, a
            failure moves the request to the next live replica without waiting; the delay
            applies once every replica failed it (a "round"), and ``max_retries`` counts rounds.
        max_backoff_s: The longest delay between two health probes of a replica that is out.
        initial_policy_version: The version reported until the server names one in
            ``weight_versions``.
    """

    base_url: str | Sequence[str]
    model: str
    api_key: str | None = None
    entropy_estimator: EntropyEstimator = "auto"
    fallback_estimator: FallbackEstimator = "topk"
    top_logprobs: int = 20
    timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    initial_policy_version: int = 0
    base_urls: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self) -> None:
        urls = replica_urls(self.base_url)
        object.__setattr__(self, "base_urls", urls)
        object.__setattr__(self, "base_url", ",".join(urls))
        if not self.model:
            raise ConfigError("model must name the served model (see GET /v1/models)")
        if self.entropy_estimator not in ESTIMATORS:
            raise ConfigError(
                f"entropy_estimator must be one of {ESTIMATORS}, got {self.entropy_estimator!r}"
            )
        if self.fallback_estimator not in ("topk", "surprisal"):
            raise ConfigError(
                f"fallback_estimator must be 'topk' or 'surprisal', got {self.fallback_estimator!r}"
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
        if self.max_backoff_s < self.backoff_s:
            raise ConfigError(
                f"max_backoff_s must be >= backoff_s ({self.backoff_s}), got {self.max_backoff_s}"
            )

    @property
    def logprobs_k(self) -> int:
        """The ``logprobs`` field of an estimating request: k alternatives, or 0 (sampled token
        only)."""
        estimator = self.entropy_estimator
        if estimator == "auto":
            estimator = self.fallback_estimator
        return self.top_logprobs if estimator == "topk" else 0


def server_root(base_url: str) -> str:
    """``http://host:port`` from a URL given with or without a trailing ``/v1``."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def replica_urls(base_url: str | Sequence[str]) -> tuple[str, ...]:
    """The distinct server roots named by one URL, a comma-separated string or a list of them.

    Raises :class:`ConfigError` for an empty list, a URL that is not http(s) or a duplicate.
    """
    given = [base_url] if isinstance(base_url, str) else list(base_url)
    parts = [p.strip() for item in given for p in str(item).split(",") if p.strip()]
    if not parts:
        raise ConfigError("base_url must name at least one server, e.g. http://127.0.0.1:8000")
    roots: list[str] = []
    for part in parts:
        if not part.startswith(("http://", "https://")):
            raise ConfigError(f"base_url must start with http:// or https://, got {part!r}")
        root = server_root(part)
        if root in roots:
            raise ConfigError(f"base_url names the replica {root} twice")
        roots.append(root)
    return tuple(roots)


__all__ = ["HttpBackendConfig", "replica_urls", "server_root"]
