"""Blocking reads of a request, with an optional time limit (`timeout`).

A request is cancelled at its deadline. Cancelling ends a request that has a slot within one
step, but one still queued only once it reaches the head of the queue, so a thread blocked in
`Request.next()` on it could wait far past the deadline. Until its first output a timed request
is therefore awaited on a pipe the engine signals (as `AsyncRequest` does for asyncio), for no
longer than the time left; from then on it is read like any other, while a watchdog timer
cancels it at the deadline. Neither costs anything per token.
"""

from __future__ import annotations

import contextlib
import itertools
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
        if self._poller.poll(max(math.ceil(seconds * 1000), 0)):
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

    Past the deadline the request is cancelled, which frees its slot (or its place in the queue),
    and reading it raises `TimeoutError`. Without a timeout it is read as a plain `Request`.
    """

    def __init__(self, engine: _native.Engine, params: _native.RequestParams, timeout: float | None) -> None:
        self.timeout = timeout
        self._deadline = math.inf if timeout is None else time.monotonic() + timeout
        self._pipe = None if timeout is None else _borrow_pipe()
        self._watchdog: threading.Timer | None = None
        self._expired = False
        try:
            with _engine.quiet_at_exit():
                self.request: _native.Request = engine.submit(params, -1 if self._pipe is None else self._pipe.write_fd)
        except BaseException:
            self.cancel()
            raise

    def __iter__(self) -> Iterator[_native.Chunk]:
        """The chunks as they come; leaving early cancels the request."""
        try:
            for chunk in itertools.chain(self._start(), _engine.iter_chunks(self.request)):
                if self._expired:
                    self._raise_if_cut_short()
                yield chunk
            self._raise_if_cut_short()
        finally:
            self.cancel()

    def wait(self) -> list[_native.Chunk]:
        """Block until the request is done; all its chunks."""
        try:
            chunks = self._start() + _engine.wait(self.request)
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

    def _expire(self) -> None:
        self._expired = True
        self.request.cancel()

    def _raise_if_cut_short(self) -> None:
        """TimeoutError if the deadline passed before the request finished on its own."""
        if self._expired and self.request.finish_reason in ("", "cancelled"):
            raise TimeoutError(_engine.timeout_message(self.timeout or 0.0))
