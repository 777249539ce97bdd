"""What happens to instances and threads at process boundaries: pickling and copying without the
native state, and threads parked quietly at interpreter exit.

An instance caches native objects (its engine, a chat model's template worker) in private attributes.
They hold a running thread and llama.cpp memory, so they cannot be pickled; and they need not
be, since they are made again from the fields on first use. A copy shares them: an engine is
shared by every instance with the same settings anyway.

fork() is handled where the state is: the shared engines (`_registry`), the wake-up pipes
(`_readers`) and the template workers (`_templates`) each register their own at-fork hook.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

from pydantic import BaseModel

import langchain_llamacpp._native as _native
import langchain_llamacpp._templates as _templates


class NativeStateMixin(BaseModel):
    """Pickles the fields and drops the cached native objects (the unpickled instance loads lazily).

    `multiprocessing` with "spawn", `ProcessPoolExecutor` and the like pickle the instance to send
    it. Callbacks pickle only if their handlers do; the default (None) does.
    """

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private:
            defaults = type(self).__private_attributes__
            state["__pydantic_private__"] = {
                name: defaults[name].get_default() if _is_native(value) else value for name, value in private.items()
            }
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # Native objects cannot be copied: the copy shares them, as instances share engines.
        memo = {} if memo is None else memo
        for value in (self.__pydantic_private__ or {}).values():
            if _is_native(value):
                memo[id(value)] = value
        return super().__deepcopy__(memo)


def _is_native(value: Any) -> bool:
    # Native objects, and the chat-template worker process (which belongs to one process).
    return type(value).__module__ in (_native.__name__, _templates.__name__)


# -- interpreter exit -------------------------------------------------------------------------
#
# At exit the interpreter joins the non-daemon threads, runs the atexit handlers (`_registry`'s
# shuts the engines down, see `begin_exit`) and then freezes the daemon threads wherever they are.

_exiting = False
# Threads stopped for good at exit (_stop_thread_at_exit).
_parked: set[int] = set()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def begin_exit() -> None:
    """From now on a thread that waits on an engine, other than the main thread, is parked."""
    global _exiting
    _exiting = True


def exiting() -> bool:
    """Whether the interpreter is exiting (the engines are shut down or being shut down)."""
    return _exiting


def wait_for_package_threads(grace_s: float) -> None:
    """Give the threads running in this package the GIL to stop in, for up to `grace_s` seconds.

    They stop at their next wait on an engine. Once the interpreter finalizes, a daemon thread that
    takes the GIL back on returning from a native call is ended by pthread_exit inside nanobind's
    (noexcept) GIL guard, and std::terminate aborts the process.
    """
    deadline = time.monotonic() + grace_s
    while _threads_in_package() and time.monotonic() < deadline:
        time.sleep(0.001)


def _threads_in_package() -> bool:
    """Whether another thread, not stopped yet, has a frame in this package (it may be in a native call)."""
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        if ident == me or ident in _parked:
            continue
        f: Any = frame
        while f is not None:
            if f.f_code.co_filename.startswith(_PACKAGE_DIR):
                return True
            f = f.f_back
    return False


def _stop_thread_at_exit() -> None:
    """Park this thread for good if the interpreter is exiting and it is not the main thread.

    A daemon thread waiting on a request is woken by the engines' shutdown first, with an error: it
    freezes here instead, a little early, so that the error never reaches user code (a traceback on
    stderr, a retry, a truncated result taken for a whole one).
    """
    if _exiting and threading.current_thread() is not threading.main_thread():
        _parked.add(threading.get_ident())
        threading.Event().wait()


class _QuietAtExit:
    """See `quiet_at_exit`. A class rather than a generator: it is entered once per token."""

    def __enter__(self) -> None:
        if _exiting:  # the engines are gone: stop before waiting on one
            _stop_thread_at_exit()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if kind is not None and issubclass(kind, RuntimeError):
            _stop_thread_at_exit()


_QUIET_AT_EXIT = _QuietAtExit()


def quiet_at_exit() -> _QuietAtExit:
    """Around a call that waits on an engine: an engine shut down at exit stops the thread quietly."""
    return _QUIET_AT_EXIT
