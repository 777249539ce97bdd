"""Helpers for tests that drive one model from many threads or watch the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def text_and_logprobs(llm: Any) -> Callable[[str], str]:
    """A call that returns the completion and its token logprobs as one string, to compare exactly."""

    def run(prompt: str) -> str:
        generation = llm.generate([prompt]).generations[0][0]
        assert generation.generation_info is not None
        return generation.text + repr(generation.generation_info["logprobs"]["token_logprobs"])

    return run


def call_from_threads(fn: Callable[[str], str], prompts: list[str], n_threads: int) -> list[list[str]]:
    """Every thread calls fn on every prompt in order; results[thread][prompt]. Re-raises the first error."""
    results: list[list[str]] = [[""] * len(prompts) for _ in range(n_threads)]
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i, p in enumerate(prompts):
                results[t][i] = fn(p)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


async def collect_counting_loop_ticks(stream: AsyncIterator[T], interval: float) -> tuple[list[T], int]:
    """Drain an async stream while a task counts how often the event loop got to run it."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(interval)

    task = asyncio.create_task(ticker())
    items = [item async for item in stream]
    done = True
    await task
    return items, ticks
