"""The in-process backend's worker thread: admission, decode steps, and swaps between requests.

One thread owns the model. Between any two decode steps it moves the requests queued meanwhile
into the running batch (:class:`~tepo_agent.backends._decode.DecodeBatch`), up to
``max_batch_size`` rows, so a request joins within ``join_delay_steps`` steps (at once when the
backend is idle) and leaves the step it finishes. When the batch is idle, the first request waits
``batch_wait_s`` for company before its prefill.

Controls (weight swaps) keep their place in the queue. Once the worker reads one, it admits no
request queued after it; it lets the rows in flight and the requests queued before the control
finish on the old weights, runs the control with no row running, then admits again. So under
continuous load a swap waits for a bounded set of requests (those ahead of it), never for an idle
moment, and no request ever mixes two versions of the weights (docs/architecture.md,
invariant 7). Shutdown is a control too: rows in flight finish, waiting requests fail.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from tepo_agent.backends._decode import DecodeBatch, Finished, JoinFailed, Request
from tepo_agent.errors import BackendError


@dataclass(frozen=True)
class BackendStats:
    """Counters since the backend started (a snapshot; read ``backend.stats`` again to refresh).

    Attributes:
        requests: generate requests completed (successfully or not).
        batches: busy periods: runs of decode steps from an idle backend until it is idle again
            (requests join and leave a running batch at every step).
        tokens: tokens sampled and returned.
        max_batch: the most requests decoded in one step so far.
        weight_loads: successful weight reloads.
        failed_requests: requests that ended with an error.
        steps: decode steps run (one forward pass each; HF's prefill passes not counted, the
            packed forward's mixed steps, which carry the joining rows' prompts, counted).
        prompt_tokens: prompt tokens admitted.
        cached_prompt_tokens: of those, the ones whose KV came from the prefix cache.
    """

    requests: int = 0
    batches: int = 0
    tokens: int = 0
    max_batch: int = 0
    weight_loads: int = 0
    failed_requests: int = 0
    steps: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0


@dataclass
class Control:
    """Work that needs the model to itself (a weight swap), run when no row is decoding."""

    run: Callable[[], None]
    future: concurrent.futures.Future[None]


SHUTDOWN = object()


class Scheduler:
    """Runs ``batch`` in its own thread; :meth:`put` queues requests and controls."""

    def __init__(
        self,
        batch: DecodeBatch,
        *,
        max_batch_size: int,
        batch_wait_s: float,
        join_delay_steps: int,
        version: Callable[[], int],
    ) -> None:
        self._batch = batch
        self._max_batch = max_batch_size
        self._wait = batch_wait_s
        self._version = version
        self._queue: queue.Queue[object] = queue.Queue()
        self._waiting: deque[Request] = deque()  # read from the queue, not admitted yet
        self._held: object | None = None  # a Control or SHUTDOWN waiting for the batch to empty
        self._join_delay = join_delay_steps
        self._steps = 0  # decode steps run
        self._waiting_since: int | None = None  # the step the oldest waiting request was seen
        self._stats = BackendStats()
        self._stats_lock = threading.Lock()
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="tepo-transformers", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> BackendStats:
        with self._stats_lock:
            return self._stats

    def put(self, item: Request | Control) -> None:
        with self._close_lock:
            if self._closed:
                raise BackendError("the backend is closed: create a new one")
            self._queue.put(item)

    def close(self) -> None:
        """Let the rows in flight finish, fail everything still queued, stop the thread."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(SHUTDOWN)
        self._thread.join()

    # ------------------------------------------------------------------ the loop

    def _serve(self) -> None:
        while True:
            running = len(self._batch)
            self._pull(block=running == 0 and not self._waiting and self._held is None)
            if self._waiting and len(self._batch) < self._max_batch and self._join_due():
                self._admit()
            if len(self._batch):
                self._step()
                continue
            if self._waiting:
                continue
            held, self._held = self._held, None
            if held is SHUTDOWN:
                self._drain()
                return
            if isinstance(held, Control):
                self._run_control(held)

    def _join_due(self) -> bool:
        """Whether the waiting requests join now. Each join costs a prefill forward pass and a
        copy of the batch's cache, so, as TGI's router does (``max_waiting_tokens``), requests
        that arrive while a batch runs wait up to ``join_delay_steps`` decode steps for others
        to join with them; an idle backend, or one that can fill its batch, admits at once."""
        if not len(self._batch) or len(self._batch) + len(self._waiting) >= self._max_batch:
            return True
        if self._waiting_since is None:
            self._waiting_since = self._steps
        return self._steps - self._waiting_since >= self._join_delay

    def _pull(self, *, block: bool) -> None:
        """Move queued requests into ``_waiting`` while there is room, stopping at a control.

        ``block``: the backend is idle; wait for a request, then ``batch_wait_s`` for more."""
        deadline: float | None = None
        while self._held is None and len(self._batch) + len(self._waiting) < self._max_batch:
            try:
                if block:
                    item = self._queue.get()
                    block, deadline = False, time.monotonic() + self._wait
                elif deadline is not None:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Request):
                self._waiting.append(item)
            else:
                self._held = item
                if item is SHUTDOWN:  # not admitted yet: fail now rather than decode
                    self._fail_waiting()

    def _admit(self) -> None:
        self._waiting_since = None
        room = self._max_batch - len(self._batch)
        taken = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
        live = [r for r in taken if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        idle = len(self._batch) == 0
        before = (self._batch.prompt_tokens, self._batch.cached_tokens)
        try:
            finished = self._batch.admit(live, self._version())
        except Exception as exc:  # never kill the worker: fail these requests instead
            self._fail(live, exc)
            return
        with self._stats_lock:
            s = self._stats
            self._stats = replace(
                s,
                batches=s.batches + int(idle),
                max_batch=max(s.max_batch, len(self._batch) + len(finished)),
                prompt_tokens=s.prompt_tokens + self._batch.prompt_tokens - before[0],
                cached_prompt_tokens=s.cached_prompt_tokens + self._batch.cached_tokens - before[1],
            )
        self._deliver(finished)

    def _step(self) -> None:
        try:
            finished = self._batch.step()
        except JoinFailed as failed:  # a mixed step: the joining requests fail, the rest go on
            cause = failed.__cause__
            self._fail(failed.requests, cause if isinstance(cause, Exception) else failed)
            return
        except Exception as exc:  # the whole step failed: so did every row in it
            self._fail(self._batch.clear(), exc)
            return
        self._steps += 1
        with self._stats_lock:
            self._stats = replace(self._stats, steps=self._stats.steps + 1)
        self._deliver(finished)

    def _deliver(self, finished: Finished) -> None:
        if not finished:
            return
        with self._stats_lock:
            s = self._stats
            tokens = sum(len(g.token_ids) for _, g in finished)
            self._stats = replace(s, requests=s.requests + len(finished), tokens=s.tokens + tokens)
        for request, generation in finished:
            request.future.set_result(generation)

    def _fail(self, requests: list[Request], exc: Exception) -> None:
        with self._stats_lock:
            s = self._stats
            self._stats = replace(
                s,
                requests=s.requests + len(requests),
                failed_requests=s.failed_requests + len(requests),
            )
        for request in requests:  # one error object per request: tracebacks differ
            request.future.set_exception(wrap(exc, "generation failed"))

    def _run_control(self, control: Control) -> None:
        if not control.future.set_running_or_notify_cancel():
            return
        try:
            control.run()
        except Exception as exc:
            control.future.set_exception(wrap(exc, "weight load failed"))
        else:
            with self._stats_lock:
                self._stats = replace(self._stats, weight_loads=self._stats.weight_loads + 1)
            control.future.set_result(None)

    def _fail_waiting(self) -> None:
        closed = BackendError("the backend was closed before this ran")
        while self._waiting:
            request = self._waiting.popleft()
            if request.future.set_running_or_notify_cancel():
                request.future.set_exception(closed)

    def _drain(self) -> None:
        self._fail_waiting()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, Request | Control) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(BackendError("the backend was closed before this ran"))


def wrap(exc: Exception, what: str) -> BackendError:
    """``exc`` as the BackendError callers catch."""
    if isinstance(exc, BackendError):
        return exc
    error = BackendError(f"{what}: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


__all__ = ["SHUTDOWN", "BackendStats", "Control", "Scheduler", "wrap"]
