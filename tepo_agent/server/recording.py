"""``tepo-agent serve --record``: every chat completion recorded as a token-exact trajectory.

The chat route asks the :class:`Recorder` for the prompt of each request (:meth:`Recorder.plan`:
the linked conversation's sampled ids spliced, see :mod:`tepo_agent.server.sessions`) and hands it
the answers (:meth:`Recorder.record`). Finished trajectories are written to the store by one
writer thread, in order, off the request path; the same thread finishes trajectories idle for
``idle_s`` (recorded as finished, ``ended: "idle for N s"``) and applies HTTP feedback, after
every write queued before it, so feedback on a response just returned finds its trajectory.

A recording failure never fails the request: :meth:`plan` and :meth:`record` catch everything,
log it and count it (``recording_failures`` at ``GET /v1/recording/metrics``), and the request is
answered from the plain rendering. ``requests == recorded_requests + recording_failures`` (per
key) is the check that nothing was lost silently; a trajectory that could not be written counts
in ``write_failures``.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tepo_agent.backends.base import Generation
from tepo_agent.chat.format import ChatFormat
from tepo_agent.errors import ConfigError
from tepo_agent.server.keys import Principal
from tepo_agent.server.sessions import LiveTrajectory, Plan, SessionTable
from tepo_agent.server.transcript import to_trajectory
from tepo_agent.store import ServedResponse, Store

LOG = logging.getLogger("tepo_agent.serve.record")


@dataclass(frozen=True)
class RecordingConfig:
    """How ``serve --record`` bounds what it holds.

    Attributes:
        idle_s: An open trajectory (waiting for tool results) with no request for this long is
            recorded as finished; a finished one is forgotten (a later question of that chat
            starts a new, re-rendered trajectory in a new session).
        max_live: Most trajectories held in memory (open, or finished and kept for a chat's next
            question); the least recently used goes first.
        max_pending: Most finished trajectories waiting for the writer; beyond it a trajectory
            is dropped and counted in ``write_failures``.
        tick_s: How often the writer looks for idle trajectories.
    """

    idle_s: float = 600.0
    max_live: int = 1024
    max_pending: int = 1024
    tick_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.idle_s > 0 or not self.tick_s > 0:
            raise ConfigError(f"idle_s and tick_s must be > 0, got {self.idle_s}, {self.tick_s}")
        if self.max_live < 1 or self.max_pending < 1:
            raise ConfigError(
                f"max_live and max_pending must be >= 1, got {self.max_live}, {self.max_pending}"
            )


class NotFound(LookupError):
    """Nothing the caller's key may see has this id (answered 404)."""


class Recorder:
    """Plans prompts, records answers, writes trajectories, applies feedback (see module doc)."""

    def __init__(
        self,
        store: Store,
        chat_format: ChatFormat,
        config: RecordingConfig | None = None,
    ) -> None:
        self.store = store
        self.chat_format = chat_format
        self.config = config or RecordingConfig()
        self.table = SessionTable(chat_format, max_live=self.config.max_live)
        self.lock = threading.Lock()
        self._counts: dict[str, Counter[str]] = {}
        self._jobs: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._jobs = queue.Queue()
        self._pending = 0
        self._thread = threading.Thread(target=self._work, name="tepo-record", daemon=True)
        self._thread.start()

    # -- counters ------------------------------------------------------------------------------

    def count(self, owner: str, name: str, n: int = 1) -> None:
        with self.lock:
            self._counts.setdefault(owner, Counter())[name] += n

    def metrics(self, who: Principal) -> dict[str, Any]:
        """The counters of ``who``'s key (all keys, and the totals, for the admin)."""
        with self.lock:
            counts = {k: dict(v) for k, v in self._counts.items()}
            live = {"live_trajectories": len(self.table), "open": self.table.open_count()}
            pending = self._pending
        if not who.admin:
            return {"key": who.name, **counts.get(who.name, {})}
        total: Counter[str] = Counter()
        for value in counts.values():
            total.update(value)
        return {"total": dict(total), "by_key": counts, **live, "pending_writes": pending}

    # -- the chat route ------------------------------------------------------------------------

    def plan(
        self,
        who: Principal,
        messages: Sequence[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        rendered: list[int],
    ) -> Plan | None:
        """The request's plan; None (and counted) when recording it failed.

        A request is counted once it is answered: here when it will be answered unrecorded, else
        in :meth:`record` (a request that fails before its answer has nothing to record).
        """
        try:
            with self.lock:
                return self.table.plan(who.name, who.session, messages, tools, rendered)
        except Exception:
            LOG.exception("recording failed while linking a request; it is answered unrecorded")
            self.count(who.name, "requests")
            self.count(who.name, "recording_failures")
            return None

    def record(
        self,
        plan: Plan,
        response_id: str,
        answers: Sequence[tuple[Generation, dict[str, Any]]],
    ) -> dict[str, str]:
        """Record the answers of a planned request; the response headers that name them."""
        self.count(plan.owner, "requests")
        try:
            with self.lock:
                finished = self.table.record(plan, response_id, answers)
                ids = [t.id for t in self.table.by_response(response_id)]
            for live in finished:
                self._write(live)
            self.count(plan.owner, "recorded_requests")
            return {"x-tepo-session-id": plan.session_id, "x-tepo-trajectory-id": ",".join(ids)}
        except Exception:
            LOG.exception("recording failed after the answer; the answer is sent unrecorded")
            self.count(plan.owner, "recording_failures")
            return {}

    # -- the writer thread ---------------------------------------------------------------------

    def submit(self, job: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``job`` on the writer thread, after every write queued before it."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((job, future))
        return future

    def _write(self, live: LiveTrajectory) -> None:
        with self.lock:
            full = self._pending >= self.config.max_pending
            if not full:
                self._pending += 1
        if full:
            LOG.error("the store is behind: trajectory %s dropped", live.id)
            self.count(live.owner, "write_failures")
            return
        self.submit(lambda: self._commit(live, queued=True))

    def _commit(self, live: LiveTrajectory, *, queued: bool = False) -> None:
        """Write one finished trajectory and its response ids (on the writer thread)."""
        try:
            trajectory = to_trajectory(live, self.chat_format)
            self.store.add(trajectory)
            now = time.time()
            self.store.record_served(
                [
                    ServedResponse(rid, live.id, live.session_id, live.owner, now)
                    for rid in live.response_ids()
                ]
            )
            self.count(live.owner, "trajectories_recorded")
        except Exception:
            LOG.exception("trajectory %s could not be written", live.id)
            self.count(live.owner, "write_failures")
        finally:
            if queued:
                with self.lock:
                    self._pending -= 1

    def _work(self) -> None:
        while True:
            try:
                item = self._jobs.get(timeout=self.config.tick_s)
            except queue.Empty:
                self._expire()
                continue
            if item is None:
                return
            job, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(job())
            except BaseException as exc:
                future.set_exception(exc)

    def _expire(self) -> None:
        with self.lock:
            finished = self.table.expire(self.config.idle_s)
        for live in finished:
            self.count(live.owner, "expired")
            self._commit(live)

    def finish_now(self, lives: Sequence[LiveTrajectory], reason: str) -> None:
        """Close and write these open trajectories now (call on the writer thread)."""
        for live in lives:
            with self.lock:
                closed = self.table.close(live, reason)
            if closed is not None:
                self._commit(closed)

    def close(self, timeout_s: float = 30.0) -> None:
        """Record every open trajectory as finished, write what is queued, stop the writer."""
        if not self._thread.is_alive():
            return

        def final() -> None:
            with self.lock:
                finished = self.table.close_all("the server stopped")
            for live in finished:
                self._commit(live)

        self.submit(final)
        self._jobs.put(None)
        self._thread.join(timeout_s)


__all__ = ["NotFound", "Recorder", "RecordingConfig"]
