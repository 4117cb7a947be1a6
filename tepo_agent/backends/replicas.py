"""Which serving replica answers next: least outstanding requests, failed ones taken out.

:class:`~tepo_agent.backends.http_backend.HttpBackend` over several base URLs keeps one
:class:`ReplicaPool`. A request goes to the replica that is up and has the fewest requests in
flight (ties: the one picked least often, so an idle fleet is used round-robin). A replica that
fails (connection error, timeout, 5xx) is taken out; it comes back after a health probe
(``GET /health`` answered 200) or a request that succeeds on it. Probes are spaced by exponential
backoff: ``backoff_s * 2**(failures - 1)``, at most ``max_backoff_s``.

The pool lives on one event loop (no locks). The backend does the requests and reports each
outcome with :meth:`ReplicaPool.answered` / :meth:`ReplicaPool.failed`; the pool runs the health
probes itself, as background tasks on the backend's HTTP client (:meth:`ReplicaPool.start_probes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


@dataclass
class Replica:
    """One serving replica's routing state (mutated by its :class:`ReplicaPool`)."""

    url: str
    up: bool = True
    outstanding: int = 0
    picks: int = 0
    answered: int = 0
    failures: int = 0  # consecutive failures; 0 while up
    retry_at: float = 0.0  # monotonic time of the next health probe while down
    probe: asyncio.Task[None] | None = None  # the health probe running, if any
    last_error: str | None = None


@dataclass(frozen=True)
class ReplicaStatus:
    """A snapshot of one replica, as :meth:`ReplicaPool.status` reports it.

    Attributes:
        url: The replica's base URL.
        up: Whether requests are routed to it.
        outstanding: Requests in flight on it now.
        answered: Requests it answered successfully.
        failures: Consecutive failures (0 while up).
        retry_in_s: Seconds until its next health probe (None while up).
        last_error: The last failure, while down.
    """

    url: str
    up: bool
    outstanding: int
    answered: int
    failures: int
    retry_in_s: float | None
    last_error: str | None


class ReplicaPool:
    """Least-outstanding routing over ``urls`` with failed replicas taken out.

    Args:
        urls: The replicas' base URLs (distinct).
        backoff_s: Delay before the first health probe of a failed replica.
        max_backoff_s: The longest delay between two probes.
        clock: Monotonic seconds (injectable for tests of the backoff).
    """

    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        backoff_s: float,
        max_backoff_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.replicas = [Replica(url) for url in urls]
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._probes: set[asyncio.Task[None]] = set()

    def choose(self, exclude: set[str]) -> Replica | None:
        """The up replica not in ``exclude`` with the fewest requests in flight, else None."""
        up = [r for r in self.replicas if r.up and r.url not in exclude]
        if not up:
            return None
        best = min(up, key=lambda r: (r.outstanding, r.picks))
        best.picks += 1
        return best

    def soonest_down(self, exclude: set[str]) -> Replica | None:
        """The down replica not in ``exclude`` due soonest for a probe (a request may try it
        directly when no replica is up), else None."""
        down = [r for r in self.replicas if not r.up and r.url not in exclude]
        return min(down, key=lambda r: r.retry_at) if down else None

    def due_for_probe(self) -> list[Replica]:
        """Down replicas whose backoff has run out and that no probe is checking yet."""
        now = self._clock()
        return [
            r
            for r in self.replicas
            if not r.up and (r.probe is None or r.probe.done()) and r.retry_at <= now
        ]

    @contextmanager
    def in_flight(self, replica: Replica) -> Iterator[None]:
        """Count a request as outstanding on ``replica`` while the block runs."""
        replica.outstanding += 1
        try:
            yield
        finally:
            replica.outstanding -= 1

    def succeeded(self, replica: Replica) -> None:
        """``replica`` answered (a request or a probe): it is up, its failures forgotten."""
        replica.up, replica.failures, replica.last_error = True, 0, None

    def answered(self, replica: Replica) -> None:
        """A request succeeded on ``replica``."""
        replica.answered += 1
        self.succeeded(replica)

    def failed(self, replica: Replica, problem: str) -> None:
        """``replica`` failed: take it out and schedule its next probe with backoff."""
        replica.up = False
        replica.failures += 1
        replica.last_error = problem
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (replica.failures - 1))
        replica.retry_at = self._clock() + delay

    def start_probes(self, client: httpx.AsyncClient) -> None:
        """Probe (``GET /health``) each replica that is out and due, in the background.

        With one replica there is nothing to route around: each request is its probe.
        """
        if len(self.replicas) < 2:
            return
        loop = asyncio.get_running_loop()
        for replica in self.replicas:  # a probe left behind by an event loop that ended
            if replica.probe is not None and replica.probe.get_loop() is not loop:
                replica.probe = None
        for replica in self.due_for_probe():
            task = loop.create_task(self._probe(client, replica))
            replica.probe = task
            self._probes.add(task)
            task.add_done_callback(self._probes.discard)

    async def stop_probes(self) -> None:
        """Cancel the probes still running (before the client closes)."""
        for task in list(self._probes):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self, client: httpx.AsyncClient, replica: Replica) -> None:
        try:
            response = await client.get(f"{replica.url}/health")
            if response.status_code == 200:
                self.succeeded(replica)
            else:
                self.failed(replica, f"health probe: HTTP {response.status_code}")
        except httpx.HTTPError as exc:
            self.failed(replica, f"health probe: {type(exc).__name__}: {exc}")

    def status(self) -> list[ReplicaStatus]:
        """Every replica's state, in the configured order."""
        now = self._clock()
        return [
            ReplicaStatus(
                url=r.url,
                up=r.up,
                outstanding=r.outstanding,
                answered=r.answered,
                failures=r.failures,
                retry_in_s=None if r.up else max(0.0, r.retry_at - now),
                last_error=r.last_error,
            )
            for r in self.replicas
        ]


__all__ = ["Replica", "ReplicaPool", "ReplicaStatus"]
