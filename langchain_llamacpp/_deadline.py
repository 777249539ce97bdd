"""Blocking reads of a request, with an optional time limit (`timeout`).

A request past its deadline is cancelled, but the engine drops a cancelled request that is still
queued only once it reaches the head of the queue, so `Request.next()` could block long past any
deadline. With a time limit the reader waits instead on a pipe the engine signals when output is
ready (as `AsyncRequest` does for asyncio), for no longer than the time left.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import threading
import time
from collections.abc import Iterator

import langchain_llamacpp._engine as _engine
import langchain_llamacpp._native as _native


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
        if self._poller.poll(math.ceil(seconds * 1000)):
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


os.register_at_fork(after_in_child=_after_fork_in_child)


class BlockingRequest:
    """A request read by a blocking thread, within `timeout` seconds of its submission if given.

    Past the deadline, reading raises `TimeoutError` and cancels the request, which frees its slot
    (or its place in the queue). Without a timeout it is read as a plain `Request`.
    """

    def __init__(self, engine: _native.Engine, params: _native.RequestParams, timeout: float | None) -> None:
        self.timeout = timeout
        self._deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._pipe = None if timeout is None else _borrow_pipe()
        try:
            self.request: _native.Request = engine.submit(params, -1 if self._pipe is None else self._pipe.write_fd)
        except BaseException:
            self.cancel()
            raise

    def __iter__(self) -> Iterator[_native.Chunk]:
        """The chunks as they come; leaving early cancels the request."""
        if self._pipe is None:
            yield from _engine.iter_chunks(self.request)
            return
        pipe = self._pipe
        try:
            while True:
                chunks = self.request.poll()
                if chunks:
                    yield from chunks
                elif self.request.done:
                    self.request.raise_if_failed()
                    return
                left = self._deadline - time.monotonic()
                if left <= 0:
                    if not self.request.done:
                        raise TimeoutError(_engine.timeout_message(self.timeout or 0.0))
                elif not chunks:
                    pipe.wait(left)
        finally:
            self.cancel()

    def wait(self) -> list[_native.Chunk]:
        """Block until the request is done; all its chunks."""
        if self._pipe is not None:
            return list(self)
        try:
            return list(self.request.wait())
        finally:
            self.request.cancel()

    def cancel(self) -> None:
        """Stop the request (if still running) and give back its pipe."""
        if hasattr(self, "request"):
            self.request.cancel()
        if self._pipe is not None:
            _return_pipe(self._pipe)
            self._pipe = None
