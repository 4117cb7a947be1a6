"""Hot swap: follow the policy registry and put each newly live version into a serving model.

The runtime side of publishing (docs/architecture.md, invariant 7). A :class:`PolicyFollower` polls
``PolicyRegistry.live()`` (one indexed read on a WAL database) and, when the live version
changes (a promotion or a rollback), hands the record to a target:

- :class:`InProcessTarget` — a :class:`TransformersBackend` in this process. Full weights are
  copied in place with ``load_weights``; a LoRA adapter is merged into the base weights
  (registry version 0) and copied with ``load_state_dict``. The backend applies both between
  batches, so a request never sees two versions, and every generation reports its version.
- :class:`~tepo_agent.policy.fleet.FleetTarget` — several replicas over HTTP, each brought to
  the live version (also one that restarted on old weights), with their versions reported.
- :class:`HttpTarget` — a server over HTTP. ``flavor="vllm"``: LoRA through
  ``POST /v1/load_lora_adapter`` (a new name and directory per version, ``tepo-v<N>``); full
  weights through ``POST /pause?mode=wait`` → ``POST /collective_rpc`` ``reload_weights`` →
  ``POST /reset_prefix_cache`` → ``POST /resume`` (vLLM with ``VLLM_SERVER_DEV_MODE=1``).
  ``flavor="tepo"`` (``tepo-agent serve``): LoRA the same way, full weights through its
  ``POST /v1/reload_weights``. Both servers swap between requests.

This module never imports the trainer. Example::

    follower = PolicyFollower("tepo-agent.db", InProcessTarget(backend))
    follower.start(poll_interval_s=1.0)     # background thread; or call poll_once() yourself
    ...
    follower.stop()
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Literal, Protocol, runtime_checkable

import httpx
import torch

from tepo_agent.backends.transformers_backend import TransformersBackend
from tepo_agent.errors import BackendError, ConfigError, PublishError
from tepo_agent.policy.registry import PolicyRecord, PolicyRegistry


class SwapTarget(Protocol):
    """Something that can serve a registered policy version."""

    def swap(self, record: PolicyRecord, base: PolicyRecord | None) -> None:
        """Serve ``record`` from the next request on (``base`` is version 0, for LoRA)."""
        ...


@runtime_checkable
class CatchUpTarget(SwapTarget, Protocol):
    """A target that can fall behind the live version on its own (a replica restarted on old
    weights, :class:`~tepo_agent.policy.fleet.FleetTarget`): the follower asks it every poll."""

    def out_of_date(self, record: PolicyRecord) -> bool:
        """Whether some part of the target does not serve ``record`` (the live version)."""
        ...


def base_weights(model_dir: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Every weight of a full model directory on CPU, tied ones included (a LoRA merge base)."""
    from tepo_agent.model.io import load_causal_lm
    from tepo_agent.model.lora import snapshot_weights

    return snapshot_weights(load_causal_lm(model_dir, device="cpu", dtype="float32"))


class InProcessTarget:
    """Swap versions into a :class:`TransformersBackend` in this process."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self._base: tuple[str, dict[str, torch.Tensor]] | None = None

    def _base_weights(self, base: PolicyRecord | None) -> dict[str, torch.Tensor]:
        if base is None or base.kind != "full":
            raise PublishError("a LoRA version needs a full base model registered as version 0")
        if self._base is None or self._base[0] != base.path:
            self._base = (base.path, base_weights(base.path))
        return self._base[1]

    def swap(self, record: PolicyRecord, base: PolicyRecord | None) -> None:
        if record.kind == "full":
            self.backend.load_weights(record.path, policy_version=record.version)
            return
        from tepo_agent.model.lora import merged_lora_weights

        merged = merged_lora_weights(self.backend.model, self._base_weights(base), record.path)
        self.backend.load_state_dict(merged, policy_version=record.version)


HttpFlavor = Literal["vllm", "tepo"]


class HttpTarget:
    """Swap versions into a vLLM server or ``tepo-agent serve`` (see the module docstring).

    Args:
        base_url: The server root, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
        flavor: ``vllm`` or ``tepo``.
        api_key: Sent as a bearer token when given.
        timeout_s: Per-request timeout (a full reload of a large model takes seconds).
        lora_prefix: Adapters are named ``<prefix><version>``; requests must name the adapter in
            ``model`` on vLLM (``HttpBackend``'s model name), which :attr:`model_name` gives.
    """

    def __init__(
        self,
        base_url: str,
        *,
        flavor: HttpFlavor = "vllm",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        lora_prefix: str = "tepo-v",
    ) -> None:
        if flavor not in ("vllm", "tepo"):
            raise ConfigError(f"flavor must be 'vllm' or 'tepo', got {flavor!r}")
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.flavor = flavor
        self.lora_prefix = lora_prefix
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)
        self.model_name: str | None = None

    def _post(self, path: str, json: dict[str, object] | None = None) -> None:
        try:
            response = self._client.post(path, json=json)
        except httpx.HTTPError as exc:
            raise BackendError(f"hot swap: POST {self.base_url}{path} failed: {exc}") from exc
        if response.status_code >= 400:
            raise BackendError(
                f"hot swap: POST {path} answered {response.status_code}: {response.text[:300]}"
            )

    def swap(self, record: PolicyRecord, base: PolicyRecord | None) -> None:
        if record.kind == "lora":
            name = f"{self.lora_prefix}{record.version}"
            self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": record.path})
            self.model_name = name
            return
        if self.flavor == "tepo":
            self._post(
                "/v1/reload_weights", {"weights_path": record.path, "version": record.version}
            )
        else:
            self._post("/pause?mode=wait")
            try:
                self._post(
                    "/collective_rpc",
                    {"method": "reload_weights", "kwargs": {"weights_path": record.path}},
                )
                self._post("/reset_prefix_cache")
            finally:
                self._post("/resume")
        self.model_name = None

    def close(self) -> None:
        self._client.close()


class PolicyFollower:
    """Poll the registry and swap each newly live version into ``target``.

    Args:
        db: The store holding the registry: a SQLite path or a store URL (see open_store).
        target: Where versions go.
        current_version: The version the target serves now (default: the registry's live
            version at construction, i.e. assume the target already serves it).
        on_swap: Called with each record after it was swapped in.
    """

    def __init__(
        self,
        db: str | os.PathLike[str],
        target: SwapTarget,
        *,
        current_version: int | None = None,
        on_swap: Callable[[PolicyRecord], None] | None = None,
    ) -> None:
        self.registry = PolicyRegistry(db)
        self.target = target
        self.on_swap = on_swap
        if current_version is None:
            live = self.registry.live()
            current_version = live.version if live is not None else None
        self.current_version = current_version
        self.last_error: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def poll_once(self) -> int | None:
        """Swap in the live version if it changed (or a :class:`CatchUpTarget` fell behind it);
        returns the version swapped to, else None.

        A failed swap raises (the target keeps serving the old version) and is retried on the
        next poll.
        """
        with self._lock:
            live = self.registry.live()
            if live is None:
                return None
            behind = isinstance(self.target, CatchUpTarget) and self.target.out_of_date(live)
            if live.version == self.current_version and not behind:
                return None
            base = None
            if live.kind == "lora":
                base = self.registry.get(0)
            self.target.swap(live, base)
            self.current_version = live.version
        if self.on_swap is not None:
            self.on_swap(live)
        return live.version

    def start(self, poll_interval_s: float = 1.0) -> None:
        """Poll in a daemon thread every ``poll_interval_s`` seconds until :meth:`stop`."""
        if poll_interval_s <= 0:
            raise ConfigError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if self._thread is not None:
            raise ConfigError("the follower is already running")

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    self.poll_once()
                    self.last_error = None
                except Exception as exc:  # keep serving the old version; retry next poll
                    self.last_error = exc
                self._stop.wait(poll_interval_s)

        self._thread = threading.Thread(target=loop, name="tepo-hotswap", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.registry.close()

    def __enter__(self) -> PolicyFollower:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


__all__ = [
    "CatchUpTarget",
    "HttpFlavor",
    "HttpTarget",
    "InProcessTarget",
    "PolicyFollower",
    "SwapTarget",
    "base_weights",
]
