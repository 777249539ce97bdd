"""The blocking steps of the async entry points run in worker threads (`_offloop`): the caller can be
cancelled at any moment, and what the step made (a submitted request) is never left running."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from typing import Any

import pytest

import langchain_llamacpp._offloop as _offloop
from langchain_llamacpp._readers import AsyncRequest

CALLER = contextvars.ContextVar("caller", default="")


async def test_runs_in_a_worker_thread_with_the_callers_context() -> None:
    CALLER.set("me")
    ran_in = await _offloop.off_loop(lambda: (threading.get_ident(), CALLER.get()))
    assert ran_in == (ran_in[0], "me") and ran_in[0] != threading.get_ident()


async def test_exceptions_reach_the_caller() -> None:
    def fail() -> None:
        raise ValueError("model file not found")

    with pytest.raises(ValueError, match="model file not found"):
        await _offloop.off_loop(fail)


async def test_cancelled_caller_returns_at_once_and_the_result_is_abandoned() -> None:
    finished = threading.Event()
    abandoned: list[str] = []

    def slow_load() -> str:
        time.sleep(0.3)
        finished.set()
        return "engine"

    task = asyncio.ensure_future(_offloop.off_loop(slow_load, abandon=abandoned.append))
    await asyncio.sleep(0.05)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.2  # the caller did not wait for the load
    assert not finished.is_set()
    assert await asyncio.to_thread(finished.wait, 5)  # the load completes in its thread...
    await asyncio.sleep(0.05)
    assert abandoned == ["engine"]  # ...and what it made goes to `abandon`, once


@pytest.mark.parametrize("gives_up_first", [True, False])
def test_a_result_is_handed_over_exactly_once(gives_up_first: bool) -> None:
    abandoned: list[int] = []
    handoff = _offloop._Handoff(lambda: 7, abandoned.append)
    if gives_up_first:
        handoff.give_up()
        assert handoff.run() == 7
    else:
        assert handoff.run() == 7
        handoff.give_up()  # cancelled after the result was made but before the caller resumed
    assert abandoned == [7]
    # Not given up: the caller has the result and nothing is abandoned.
    kept = _offloop._Handoff(lambda: 8, abandoned.append)
    assert kept.run() == 8 and abandoned == [7]


class _SlowEngine:
    """An engine whose `submit` takes a while (a large grammar being built)."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def submit(self, params: object, notify_fd: int) -> Any:
        time.sleep(0.3)
        request = _FakeRequest()
        self.requests.append(request)
        return request


class _FakeRequest:
    cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


async def test_request_submitted_after_its_caller_was_cancelled_is_cancelled() -> None:
    engine = _SlowEngine()
    task = asyncio.ensure_future(AsyncRequest.submit(engine, None, None))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if engine.requests:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)
    assert len(engine.requests) == 1 and engine.requests[0].cancelled
