"""A fleet of serving replicas kept on one policy: each new version published to every replica.

:class:`FleetTarget` is a :class:`~tepo_agent.policy.hotswap.SwapTarget` for
:class:`~tepo_agent.policy.hotswap.PolicyFollower` over several servers (``tepo-agent serve`` or
vLLM, one :class:`~tepo_agent.policy.hotswap.HttpTarget` each). A swap goes to every replica not
already serving the version; a replica that cannot take it (down, restarting) is reported and
retried on the next poll, so the follower keeps polling until the whole fleet serves the live
version. Before each poll the fleet asks every replica what it serves (``GET /v1/models``'s
``policy_version`` on ``tepo-agent serve``; ``GET /health`` on vLLM, which reports no version: a
vLLM replica seen down is re-published once it is back). A replica restarted on old weights is
therefore brought to the live version by the next poll. :meth:`FleetTarget.status` reports which
replica serves which version (``tepo-agent fleet status`` prints it).

Weights across hosts: with a :class:`~tepo_agent.policy.weights_server.WeightsServer`, the
replicas do not read the version's path; each fetches the files from the weights server
(``POST /v1/fetch_weights``, ``tepo-agent serve`` only) and checks them against the digest
recorded at publish time (``record.metrics["sha256"]``, else the publisher's copy hashed once),
then loads its local copy. Without one, every replica loads ``record.path`` (a shared path).

Example::

    fleet = FleetTarget(["http://10.0.0.5:8000", "http://10.0.0.6:8000"], flavor="tepo",
                        weights=WeightsServer("0.0.0.0", 8100))
    with PolicyFollower(store, fleet) as follower:
        follower.start(poll_interval_s=2.0)
        ...
        print(fleet.status())
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import httpx

from tepo_agent.backends.http_config import replica_urls
from tepo_agent.errors import PublishError, TepoError
from tepo_agent.policy.hotswap import HttpFlavor, HttpTarget
from tepo_agent.policy.manifest import directory_sha256
from tepo_agent.policy.registry import PolicyRecord
from tepo_agent.policy.weights_server import WeightsServer


@dataclass(frozen=True)
class ReplicaVersion:
    """What one replica serves, as the fleet last saw it.

    Attributes:
        url: The replica's base URL.
        version: The policy version it serves (None: unknown, e.g. unreachable).
        reachable: Whether it answered the last check.
        last_error: Why the last check or publish failed, if it did.
    """

    url: str
    version: int | None
    reachable: bool
    last_error: str | None


class FleetTarget:
    """Publish each version to every replica and report which serves which (module docstring).

    Args:
        urls: The replicas' base URLs (a list, or one comma-separated string).
        flavor: ``tepo`` (``tepo-agent serve``) or ``vllm``.
        api_key: The replicas' (admin) key.
        timeout_s: Per-request timeout of a publish (a reload takes seconds).
        weights: Serve the versions' files to the replicas from here (``tepo`` flavor only);
            None: the replicas load the registry's path themselves.
        weights_token: The weights server's bearer token, passed to the replicas.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        flavor: HttpFlavor = "tepo",
        api_key: str | None = None,
        timeout_s: float = 120.0,
        weights: WeightsServer | None = None,
        weights_token: str | None = None,
    ) -> None:
        if weights is not None and flavor != "tepo":
            raise PublishError(
                "fetching weights over HTTP needs `tepo-agent serve` replicas (flavor 'tepo'); "
                "vLLM replicas load the version's path: give them a shared filesystem"
            )
        self.urls = replica_urls(urls)
        self.flavor = flavor
        self.weights = weights
        self.weights_token = weights_token
        self._targets = {
            u: HttpTarget(u, flavor=flavor, api_key=api_key, timeout_s=timeout_s) for u in self.urls
        }
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(headers=headers, timeout=timeout_s)
        self._check = httpx.Client(headers=headers, timeout=5.0)
        self._state = {u: ReplicaVersion(u, None, False, None) for u in self.urls}
        self._digests: dict[int, str] = {}
        self._lock = threading.Lock()

    # -- SwapTarget --------------------------------------------------------------------------

    def swap(self, record: PolicyRecord, base: PolicyRecord | None) -> None:
        """Bring every replica not serving ``record.version`` to it; raises PublishError naming
        the replicas that could not take it (the others serve it now)."""
        missing: list[str] = []
        for seen in self.status():
            if seen.version == record.version:
                continue
            url = seen.url
            try:
                self._publish_one(url, record, base)
            except (TepoError, httpx.HTTPError) as exc:
                with self._lock:
                    self._state[url] = dataclasses.replace(self._state[url], last_error=str(exc))
                missing.append(f"{url} ({exc})")
                continue
            with self._lock:
                self._state[url] = ReplicaVersion(url, record.version, True, None)
        if missing:
            n = len(self.urls)
            raise PublishError(
                f"version {record.version} reached {n - len(missing)} of {n} replicas; not yet: "
                f"{'; '.join(missing)}. The follower retries them on its next poll"
            )

    def out_of_date(self, record: PolicyRecord) -> bool:
        """Ask every replica what it serves; whether one does not serve ``record.version``."""
        self.refresh()
        return any(s.version != record.version for s in self.status())

    # -- status ------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Ask every replica what it serves now (see the module docstring)."""
        for url in self.urls:
            seen = self._ask(url)
            with self._lock:
                self._state[url] = seen

    def status(self) -> list[ReplicaVersion]:
        """Each replica's version as last seen (:meth:`refresh` asks them again)."""
        with self._lock:
            return [self._state[u] for u in self.urls]

    def versions(self) -> dict[int | None, list[str]]:
        """Which replicas serve which version (None: unknown or unreachable)."""
        served: dict[int | None, list[str]] = {}
        for s in self.status():
            served.setdefault(s.version, []).append(s.url)
        return served

    def close(self) -> None:
        for target in self._targets.values():
            target.close()
        self._client.close()
        self._check.close()

    # -- internals ---------------------------------------------------------------------------

    def _ask(self, url: str) -> ReplicaVersion:
        known = self._state[url]
        try:
            if self.flavor == "vllm":
                response = self._check.get(f"{url}/health")
                response.raise_for_status()
                return ReplicaVersion(url, known.version if known.reachable else None, True, None)
            response = self._check.get(f"{url}/v1/models")
            response.raise_for_status()
            version = response.json()["data"][0]["policy_version"]
            return ReplicaVersion(url, int(version), True, None)
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            return ReplicaVersion(url, None, False, f"{type(exc).__name__}: {exc}")

    def _publish_one(self, url: str, record: PolicyRecord, base: PolicyRecord | None) -> None:
        if self.weights is not None:
            record = dataclasses.replace(record, path=self._fetch(url, record))
        self._targets[url].swap(record, base)

    def _digest(self, record: PolicyRecord) -> str:
        recorded = record.metrics.get("sha256")
        if isinstance(recorded, str):
            return recorded
        if record.version not in self._digests:  # published before digests were recorded
            self._digests[record.version] = directory_sha256(record.path)
        return self._digests[record.version]

    def _fetch(self, url: str, record: PolicyRecord) -> str:
        """Have ``url`` fetch ``record``'s files from the weights server; its local path."""
        assert self.weights is not None
        digest = self._digest(record)
        body = {"manifest_url": self.weights.offer(record.path, digest), "sha256": digest}
        if self.weights_token:
            body["token"] = self.weights_token
        response = self._client.post(f"{url}/v1/fetch_weights", json=body)
        if response.status_code != 200:
            raise PublishError(
                f"{url} could not fetch version {record.version}: HTTP "
                f"{response.status_code} {response.text[:300]}"
            )
        return str(response.json()["path"])


__all__ = ["FleetTarget", "ReplicaVersion"]
