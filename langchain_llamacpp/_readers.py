"""Reading a request's output: by a blocking thread (`BlockingRequest`) or through the event loop
(`AsyncRequest`), each within the call's `timeout` (seconds from submission) if given.

Both keep one rule (`_Deadline`): a call times out when its deadline passed before the request
finished on its own. A reply that finished in time is returned whole, however late its chunks are read.

The engine writes a byte to a pipe when a request has output. `AsyncRequest` lets the event loop
watch that pipe (one per loop, shared by its requests: `_LoopWaker`), so no thread waits per
request and the loop is never blocked. A blocking reader needs the pipe only until its first
output: cancelling ends a request that has a slot within one step, but one still queued only
once it reaches the head of the queue, so a thread blocked in
`Request.next()` on it could wait far past the deadline. Until its first output a timed request
is therefore awaited on the pipe, for no longer than the time left; from then on it is read like
any other, while a watchdog timer cancels it at the deadline. Neither costs anything per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import math
import os
import select
import threading
import time
from collections.abc import AsyncIterator, Iterator

import langchain_llamacpp._native as _native
import langchain_llamacpp._offloop as _offloop
from langchain_llamacpp._lifecycle import quiet_at_exit

# -- the pipes the engine signals ------------------------------------------------------------------


class _WakePipe:
    """A pipe the engine writes a byte to when a request has output: a hint to look, nothing more."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._poller = select.poll()
        self._poller.register(self.read_fd, select.POLLIN)

    def wait(self, seconds: float) -> None:
        """Return when the engine writes, or after `seconds`."""
        if self._poller.poll(max(math.ceil(seconds * 1000), 0)):
            self.drain()

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 4096)


# Pipes are reused, never closed: a cancelled request may still write its last byte to its pipe
# after the reader has gone, which only wakes the pipe's next reader once for nothing, whereas a
# closed descriptor's number can be reused by any file or socket the process opens next.
_idle_pipes: list[_WakePipe] = []
_pipes_lock = threading.Lock()


def _borrow_pipe() -> _WakePipe:
    with _pipes_lock:
        if _idle_pipes:
            return _idle_pipes.pop()
    return _WakePipe()


def _return_pipe(pipe: _WakePipe) -> None:
    with _pipes_lock:
        _idle_pipes.append(pipe)


def _after_fork_in_child() -> None:
    # The parent keeps using its pipes: a child must not wait on them too (it could take the
    # parent's wake-up byte).
    global _pipes_lock
    for pipe in _idle_pipes:
        os.close(pipe.read_fd)
        os.close(pipe.write_fd)
    _idle_pipes.clear()
    _pipes_lock = threading.Lock()
    _LoopWaker.forget_all()


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- the deadline ----------------------------------------------------------------------------------


def timeout_message(timeout: float) -> str:
    """The message of the TimeoutError of a request that ran past its `timeout`."""
    return f"the call took longer than timeout={timeout:g} s (waiting for a free slot included); it was cancelled"


# The finish reasons of a request that did not finish on its own: still running (""), or cancelled.
_NOT_FINISHED = ("", "cancelled")


class _Deadline:
    """The timeout rule of both readers: past the deadline, a request not finished on its own raises.

    The test is the request's finish reason, set when the engine ends it whether or not its chunks
    have been read, so a reply that finished in time never raises, however late it is read.
    """

    timeout: float | None
    request: _native.Request
    _expired: bool = False

    def _raise_if_cut_short(self) -> None:
        """TimeoutError if the deadline passed before the request finished on its own."""
        if self._expired and self.request.finish_reason in _NOT_FINISHED:
            raise TimeoutError(timeout_message(self.timeout or 0.0))


# -- blocking --------------------------------------------------------------------------------------


class BlockingRequest(_Deadline):
    """A request read by a blocking thread, within `timeout` seconds of its submission if given.

    Past the deadline the request is cancelled, which frees its slot (or its place in the queue),
    and reading it raises `TimeoutError`. Without a timeout it is read as a plain `Request`.
    """

    def __init__(self, engine: _native.Engine, params: _native.RequestParams, timeout: float | None) -> None:
        self.timeout = timeout
        self._deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._pipe = None if timeout is None else _borrow_pipe()
        self._watchdog: threading.Timer | None = None
        try:
            with quiet_at_exit():
                self.request = engine.submit(params, -1 if self._pipe is None else self._pipe.write_fd)
        except BaseException:
            self.cancel()
            raise

    def __iter__(self) -> Iterator[_native.Chunk]:
        """The chunks as they come; leaving early cancels the request."""
        try:
            for chunk in itertools.chain(self._start(), self._rest()):
                self._raise_if_cut_short()
                yield chunk
            self._raise_if_cut_short()
        finally:
            self.cancel()

    def wait(self) -> list[_native.Chunk]:
        """Block until the request is done; all its chunks."""
        try:
            chunks = self._start()
            with quiet_at_exit():
                chunks += self.request.wait()
            self._raise_if_cut_short()
            return chunks
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Stop the request (if still running), its watchdog, and give back its pipe."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if hasattr(self, "request"):
            self.request.cancel()
        if self._pipe is not None:
            _return_pipe(self._pipe)
            self._pipe = None

    def _start(self) -> list[_native.Chunk]:
        """Wait for the first output within the time left, then set the watchdog; that output."""
        pipe = self._pipe
        if pipe is None:
            return []
        try:
            while True:
                chunks = self.request.poll()
                if chunks or self.request.finish_reason:  # out of the queue
                    break
                left = self._deadline - time.monotonic()
                if left <= 0:
                    self._expire()
                    self._raise_if_cut_short()
                    continue  # it finished just now
                pipe.wait(left)
        finally:
            self._pipe = None
            _return_pipe(pipe)
        if not self.request.finish_reason:
            self._watchdog = threading.Timer(max(self._deadline - time.monotonic(), 0.0), self._expire)
            self._watchdog.daemon = True
            self._watchdog.start()
        return chunks

    def _rest(self) -> Iterator[_native.Chunk]:
        """The chunks after the first output, each as it comes."""
        while True:
            with quiet_at_exit():
                chunk = self.request.next()
            if chunk is None:
                return
            yield chunk

    def _expire(self) -> None:
        self._expired = True
        self.request.cancel()


# -- asyncio ---------------------------------------------------------------------------------------


class AsyncRequest(_Deadline):
    """A request whose output arrives through the event loop.

    Leaving `batches()` early (a cancelled task, a closed stream) cancels the request. With a
    `timeout`, `batches()` raises TimeoutError past it (by the rule of `_Deadline`), which cancels
    the request too.
    """

    def __init__(self, engine: _native.Engine, params: _native.RequestParams, timeout: float | None = None) -> None:
        self._open(timeout)
        try:
            self.request = self._submit(engine, params)
        except BaseException:
            self.close()
            raise
        self._start_timer()

    @classmethod
    async def submit(
        cls, engine: _native.Engine, params: _native.RequestParams, timeout: float | None = None
    ) -> AsyncRequest:
        """The request, submitted from a worker thread: `Engine.submit` checks the prompt and builds the
        request's sampler and grammar (tens of ms for a large schema's), which the loop must not wait
        for. A caller cancelled meanwhile gets CancelledError, and the request is cancelled once made."""
        self = cls.__new__(cls)
        self._open(timeout)
        try:
            self.request = await _offloop.off_loop(
                functools.partial(self._submit, engine, params), abandon=lambda request: request.cancel()
            )
        except BaseException:
            self.close()
            raise
        self._start_timer()
        return self

    def _open(self, timeout: float | None) -> None:
        self._loop = asyncio.get_running_loop()
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._ready = asyncio.Event()
        self._closed = False
        self._waker = _LoopWaker.join(self._loop, self)

    def _submit(self, engine: _native.Engine, params: _native.RequestParams) -> _native.Request:
        with quiet_at_exit():
            return engine.submit(params, self._waker.write_fd)

    def _start_timer(self) -> None:
        if self.timeout is not None:
            self._timer = self._loop.call_later(self.timeout, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._ready.set()

    def _wake_if_signaled(self) -> None:
        request = getattr(self, "request", None)  # None while being submitted: its first poll needs no wake-up
        if request is not None and request.signaled:
            self._ready.set()

    async def batches(self) -> AsyncIterator[list[_native.Chunk]]:
        """Chunks as they become ready, a list at a time."""
        try:
            while True:
                self._raise_if_cut_short()
                self._ready.clear()
                chunks = self.request.poll()
                if chunks:
                    yield chunks
                    continue
                if self.request.done:
                    with quiet_at_exit():
                        self.request.raise_if_failed()
                    return
                await self._ready.wait()
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if hasattr(self, "request"):
            self.request.cancel()
        self._waker.leave(self)


class _LoopWaker:
    """One wake-up pipe for all the async requests of an event loop: the engine writes a byte when any
    of them has output, and one read wakes those whose output came (`Request.signaled`). With a pipe
    per request, 8 streams cost 8 reads and 8 callbacks per decode step; this costs one of each.

    The pipe is pooled, never closed: a cancelled request's engine may still write its last byte after
    the request has gone (one wake-up for nothing), and a closed descriptor's number is soon another file's.
    """

    _by_loop: dict[asyncio.AbstractEventLoop, _LoopWaker] = {}
    _lock = threading.Lock()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pipe = _borrow_pipe()
        self.write_fd = self._pipe.write_fd
        self._requests: dict[AsyncRequest, None] = {}  # insertion-ordered: woken in the order they came
        loop.add_reader(self._pipe.read_fd, self._on_readable)

    @classmethod
    def join(cls, loop: asyncio.AbstractEventLoop, request: AsyncRequest) -> _LoopWaker:
        """The loop's waker (made on its first request), with `request` among those it wakes."""
        with cls._lock:
            waker = cls._by_loop.get(loop)
            if waker is None:
                waker = cls._by_loop[loop] = cls(loop)
            waker._requests[request] = None
        return waker

    def leave(self, request: AsyncRequest) -> None:
        """`request` is done with; the last one out gives the pipe back."""
        with self._lock:
            self._requests.pop(request, None)
            if self._requests or self._by_loop.get(self._loop) is not self:
                return
            del self._by_loop[self._loop]
        self._loop.remove_reader(self._pipe.read_fd)
        self._pipe.drain()
        _return_pipe(self._pipe)

    def _on_readable(self) -> None:
        self._pipe.drain()
        for request in list(self._requests):
            request._wake_if_signaled()

    @classmethod
    def forget_all(cls) -> None:
        """In a forked child: the parent's loops and pipes are not this process's to use."""
        cls._by_loop.clear()
        cls._lock = threading.Lock()
