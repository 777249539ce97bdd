"""The blocking steps of the async entry points, run in a worker thread: the event loop never waits on them.

A call's first steps block: loading the model (seconds for a large file), starting the chat-template
worker and reading the vocabulary there, rendering, tokenizing, and `Engine.submit` building the
request's sampler and grammar. On the loop they stalled every other task (a 5 ms ticker saw a
1.8 s gap during the first `astream` on Qwen2.5-Coder-1.5B); in a worker thread the loop runs on,
since the native calls release the GIL.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

_T = TypeVar("_T")


async def off_loop(fn: Callable[[], _T], abandon: Callable[[_T], None] | None = None) -> _T:
    """`fn()` in the loop's default executor (with the caller's context variables), awaited.

    Cancelling the caller cannot stop `fn` (a model load is not interruptible): it completes in its
    thread, the caller gets CancelledError at once, and `fn`'s result goes to `abandon` (a submitted
    request is cancelled there) rather than being lost.
    """
    loop = asyncio.get_running_loop()
    handoff = _Handoff(fn, abandon)
    context = contextvars.copy_context()
    try:
        return await loop.run_in_executor(None, functools.partial(context.run, handoff.run))
    except asyncio.CancelledError:
        handoff.give_up()
        raise


class _Handoff(Generic[_T]):
    """`fn`'s result, handed to the caller or, once the caller has gone, to `abandon`: exactly one of them."""

    def __init__(self, fn: Callable[[], _T], abandon: Callable[[_T], None] | None) -> None:
        self._fn = fn
        self._abandon = abandon
        self._lock = threading.Lock()
        self._gone = False
        self._done = False
        self._result: _T | None = None

    def run(self) -> _T:
        result = self._fn()
        with self._lock:
            gone = self._gone
            self._done, self._result = True, result
        if gone and self._abandon is not None:
            self._abandon(result)
        return result

    def give_up(self) -> None:
        """The caller has gone: a result already made is abandoned now, one still to come when it comes."""
        with self._lock:
            self._gone = True
            done, result = self._done, self._result
        if done and self._abandon is not None:
            self._abandon(result)  # type: ignore[arg-type]  # done: `result` is fn's
