"""The event loops behind the synchronous API (``TepoAgent.run``, ``TepoChatModel.invoke``, ...).

The runtime is asynchronous inside. Opening a fresh event loop for every synchronous call
(``asyncio.run``) costs about a millisecond with LangGraph, a tenth of a short agent run on the
default model, and strands async clients (httpx connection pools) on closed loops. So a
synchronous call runs its coroutine to completion on a long-lived loop of the calling thread,
created on first use (and again after a ``fork``): no thread hop, the caller's context variables
are simply there, Ctrl-C cancels the coroutine. Called where an event loop is already running
in the thread (synchronous code inside async code), the coroutine runs on one shared loop in a
daemon thread instead, and the caller blocks, as any synchronous call would.

Example::

    answer = run_sync(agent.arun("What is 17 * 23?"))
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


def _serve(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    loop.run_forever()


def background_loop() -> asyncio.AbstractEventLoop:
    """The shared loop of the synchronous API, started on first use in this process."""
    global _loop, _thread, _pid
    with _lock:
        if _loop is None or _thread is None or _pid != os.getpid() or not _thread.is_alive():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=_serve, args=(loop,), name="tepo-agent-sync-loop", daemon=True
            )
            thread.start()
            _loop, _thread, _pid = loop, thread, os.getpid()
        return _loop


class _ThreadLoop(threading.local):
    loop: asyncio.AbstractEventLoop | None = None
    pid: int | None = None


_thread_loop = _ThreadLoop()


def thread_loop() -> asyncio.AbstractEventLoop:
    """The calling thread's long-lived loop for synchronous calls (not running between them)."""
    if (
        _thread_loop.loop is None
        or _thread_loop.pid != os.getpid()
        or _thread_loop.loop.is_closed()
    ):
        _thread_loop.loop, _thread_loop.pid = asyncio.new_event_loop(), os.getpid()
    return _thread_loop.loop


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from synchronous code and return its result (or raise).

    Without an event loop running in the calling thread, the coroutine runs right here on the
    thread's own long-lived loop. Under a running loop (which is blocked for the duration, as any
    synchronous call blocks it) it runs on the shared background loop; called from a coroutine
    on that shared loop itself, where waiting would deadlock, on a private loop in a helper
    thread.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is None:
        own = thread_loop()
        task = own.create_task(coro)
        try:
            return own.run_until_complete(task)
        except BaseException:
            if not task.done():  # interrupted (KeyboardInterrupt): do not leave it half-run
                task.cancel()
                with contextlib.suppress(BaseException):
                    own.run_until_complete(task)
            raise
    loop = background_loop()
    if running is loop:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, coro).result()

    context = contextvars.copy_context()
    done: concurrent.futures.Future[T] = concurrent.futures.Future()
    started = threading.Event()
    task_box: list[asyncio.Task[T]] = []

    def start() -> None:
        task = loop.create_task(coro, context=context)
        task_box.append(task)
        started.set()
        task.add_done_callback(lambda t: _copy_outcome(t, done))

    loop.call_soon_threadsafe(start)
    try:
        return done.result()
    except BaseException:
        # interrupted (KeyboardInterrupt) or failed: make sure the coroutine does not run on
        if started.wait(timeout=1.0) and task_box:
            loop.call_soon_threadsafe(task_box[0].cancel)
        raise


def _copy_outcome(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    if task.cancelled():
        future.cancel()
    elif (error := task.exception()) is not None:
        future.set_exception(error)
    else:
        future.set_result(task.result())


__all__ = ["background_loop", "run_sync", "thread_loop"]
