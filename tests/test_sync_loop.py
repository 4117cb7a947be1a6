"""The synchronous API's event loops: long-lived, no thread hop, keep context, never deadlock."""

from __future__ import annotations

import asyncio
import contextvars
import multiprocessing
import threading

import pytest

from tepo_agent.agent.sync import background_loop, run_sync, thread_loop

REQUEST = contextvars.ContextVar("REQUEST", default="unset")


async def loop_and_thread() -> tuple[asyncio.AbstractEventLoop, str]:
    return asyncio.get_running_loop(), threading.current_thread().name


def test_every_call_runs_here_on_this_threads_long_lived_loop() -> None:
    first, thread = run_sync(loop_and_thread())
    second, _ = run_sync(loop_and_thread())
    assert first is second is thread_loop()
    assert thread == threading.current_thread().name  # no hop to another thread
    assert not first.is_running() and not first.is_closed()


def test_each_thread_has_its_own_loop() -> None:
    mine, _ = run_sync(loop_and_thread())
    theirs: list[asyncio.AbstractEventLoop] = []
    worker = threading.Thread(target=lambda: theirs.append(run_sync(loop_and_thread())[0]))
    worker.start()
    worker.join()
    assert theirs and theirs[0] is not mine


def test_results_and_exceptions_reach_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("from the coroutine")

    assert run_sync(asyncio.sleep(0, result=42)) == 42
    with pytest.raises(ValueError, match="from the coroutine"):
        run_sync(fails())


def test_the_callers_context_variables_travel_with_the_coroutine() -> None:
    async def read() -> str:
        return REQUEST.get()

    token = REQUEST.set("request-7")
    try:
        assert run_sync(read()) == "request-7"
    finally:
        REQUEST.reset(token)


async def test_under_a_running_loop_the_coroutine_runs_on_the_shared_background_loop() -> None:
    loop, thread = run_sync(loop_and_thread())
    assert loop is background_loop() is not asyncio.get_running_loop()
    assert thread == "tepo-agent-sync-loop"


def test_a_coroutine_on_the_shared_loop_may_call_the_sync_api_again() -> None:
    async def outer() -> int:
        # blocking the shared loop on itself would deadlock; this runs on a private loop
        inner: int = run_sync(asyncio.sleep(0, result=5))
        return inner + 1

    done = asyncio.run_coroutine_threadsafe(outer(), background_loop())
    assert done.result(timeout=30) == 6


def test_interrupting_the_caller_cancels_the_coroutine() -> None:
    cleaned_up: list[bool] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    async def long_call() -> None:
        asyncio.get_running_loop().call_later(0.01, interrupt)  # Ctrl-C while it waits
        try:
            await asyncio.sleep(30)
        finally:
            cleaned_up.append(True)

    with pytest.raises(KeyboardInterrupt):
        run_sync(long_call())
    assert cleaned_up == [True]
    assert run_sync(asyncio.sleep(0, result="still usable")) == "still usable"


def test_a_cancelled_coroutine_raises_cancelled_in_the_caller() -> None:
    async def cancelled() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        run_sync(cancelled())


def _child(queue: multiprocessing.Queue[int]) -> None:
    queue.put(run_sync(asyncio.sleep(0, result=11)))


def test_a_forked_child_gets_its_own_loop() -> None:
    run_sync(asyncio.sleep(0))  # the parent's loop thread exists before the fork
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[int] = context.Queue()
    child = context.Process(target=_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert queue.get(timeout=5) == 11
