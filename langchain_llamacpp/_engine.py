"""Access to the native engine: shared models and engines, logging, token streams, and what
happens to engines at fork() and at interpreter exit.

Nothing here knows about LangChain; the model classes build on it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, TypeGuard, TypeVar

import langchain_llamacpp._native as _native

logger = logging.getLogger("langchain_llamacpp")
logger.addHandler(logging.NullHandler())  # a library never prints through logging's last resort
_native_logger = logging.getLogger("langchain_llamacpp.llama_cpp")

# ggml_log_level -> logging level
_LEVELS = {
    0: logging.INFO,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.INFO,
}


def flush_native_logs(verbose: bool = False) -> None:
    """Forward buffered llama.cpp log lines to `logging` (and to stderr when verbose)."""
    lines = _native.drain_logs()
    for level, text in lines:
        _native_logger.log(_LEVELS.get(level, logging.INFO), "%s", text)
        if verbose:
            print(text, file=sys.stderr)
    if verbose and lines:
        sys.stderr.flush()


# The keys of the shared models and engines: hashable copies of ModelParams and EngineParams (their
# defaults too, which _settings checks at import against the native structs and its table of settings).


@dataclass(frozen=True)
class ModelConfig:
    path: str
    n_gpu_layers: int = 0
    use_mmap: bool = True
    use_mlock: bool = False
    vocab_only: bool = False
    check_tensors: bool = False
    repack: bool = True
    kv_overrides: tuple[tuple[str, str], ...] = ()
    rpc_servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = -1
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq: int = 1
    n_threads: int = 0
    n_threads_batch: int = 0
    f16_kv: bool = True
    flash_attn: int = -1
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    embeddings: bool = False
    pooling: int = -1
    swa_full: bool = False
    offload_kqv: bool = True
    lora_path: str = ""
    lora_scale: float = 1.0
    batch_invariant: bool = False
    mmproj_path: str = ""
    kv_unified: int = -1
    # Speculative decoding: a draft model (loaded like the target, same GPU layers) and/or prompt lookup.
    draft_model_path: str = ""
    prompt_lookup: bool = False
    draft_max: int = 16
    draft_min: int = 0
    draft_p_min: float = 0.75
    draft_n_ctx: int = 0


ENGINE_FIELDS = frozenset(f.name for f in fields(EngineConfig))
# Settings of the engine that are not EngineParams fields: given to Engine.create otherwise.
NOT_PARAMS = frozenset({"draft_model_path"})
MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig)) - {"path"}

# Held while a model or engine is being made; fork() waits for it (see _before_fork).
_lock = threading.RLock()
_engines: weakref.WeakValueDictionary[tuple[ModelConfig, EngineConfig], _native.Engine] = weakref.WeakValueDictionary()
# ids of the engines this process inherited through fork(); they are never freed, so no id is reused.
_inherited: set[int] = set()
_forked = False
_exiting = False
# Threads stopped for good at exit (_stop_thread_at_exit).
_parked: set[int] = set()
# At exit, how long to wait for a model being loaded, and for threads in this package to stop.
_EXIT_GRACE_S = 5.0
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


class _LoadProgress:
    """A progress bar for a model load, fed by llama.cpp's progress callback (tqdm when installed)."""

    def __init__(self, path: str) -> None:
        self._label = f"loading {os.path.basename(path)}"
        self._shown = -1
        self._bar: Any = None

    def __call__(self, fraction: float) -> bool:
        # Created on the first report: a model already loaded (shared) reports nothing and shows nothing.
        if self._shown < 0:
            try:
                import importlib.util

                # tqdm.auto wants ipywidgets in a notebook and warns without them: plain text then.
                if importlib.util.find_spec("ipywidgets") is not None:
                    from tqdm.auto import tqdm  # type: ignore[import-untyped]
                else:
                    from tqdm.std import tqdm  # type: ignore[import-untyped]

                self._bar = tqdm(
                    total=100,
                    desc=self._label,
                    file=sys.stderr,
                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}",
                )
            except ImportError:
                pass
        percent = min(100, int(fraction * 100))
        if percent > self._shown:
            if self._bar is not None:
                self._bar.update(percent - max(self._shown, 0))
            else:
                print(f"\r{self._label}: {percent:3d}%", end="", file=sys.stderr, flush=True)
            self._shown = percent
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._shown >= 0:
            print(file=sys.stderr)


def load_model(config: ModelConfig, verbose: bool = False, progress: bool | None = None) -> _native.Model:
    """Load (or reuse) the weights for `config`; `progress` (default: `verbose`) shows a progress bar."""
    valid_text(config.path, "model_path")
    for key, value in config.kv_overrides:
        valid_text(key, "kv_overrides key")
        valid_text(value, f"kv_overrides[{key!r}]")
    params = _native.ModelParams()
    params.path = os.fspath(config.path)
    for name in MODEL_FIELDS - {"kv_overrides", "rpc_servers"}:  # those two are tuples in the key
        setattr(params, name, getattr(config, name))
    params.kv_overrides = dict(config.kv_overrides)
    params.rpc_servers = [valid_text(s, "rpc_servers") for s in config.rpc_servers]
    bar = _LoadProgress(config.path) if (verbose if progress is None else progress) else None
    with _lock:  # not while fork() copies the native model registry
        try:
            model = _native.Model.load(params, bar)
        finally:
            if bar is not None:
                bar.close()
            flush_native_logs(verbose)
    return model


def get_engine(
    model_config: ModelConfig, engine_config: EngineConfig, verbose: bool = False, progress: bool | None = None
) -> _native.Engine:
    """The engine for these settings, shared by every instance that asks for the same ones.

    Sharing the engine shares its prompt cache: an `LlamaCpp` and a `ChatLlamaCpp` on the same
    file and settings reuse each other's cached prefixes.
    """
    key = (model_config, engine_config)
    with quiet_at_exit(), _lock:  # the lock is released before the thread stops
        if _exiting:  # the engines have been shut down
            raise RuntimeError("the interpreter is exiting: no engine can be used")
        engine = _engines.get(key)
        if engine is not None:
            return engine
        model = load_model(model_config, verbose, progress)
        params = _native.EngineParams()
        for name in ENGINE_FIELDS - NOT_PARAMS:
            setattr(params, name, getattr(engine_config, name))
        valid_text(params.lora_path, "lora_path")
        draft = None
        if engine_config.draft_model_path:
            draft_config = replace(model_config, path=engine_config.draft_model_path, kv_overrides=(), rpc_servers=())
            draft = load_model(draft_config, verbose, progress)
        try:
            engine = _native.Engine.create(model, params, draft)
        finally:
            flush_native_logs(verbose)
        _engines[key] = engine
        if verbose:
            print(
                f"langchain_llamacpp: loaded {model.description} from {model_config.path} in "
                f"{model.load_time_ms:.0f} ms (n_ctx={engine.n_ctx}, {engine.n_seq} slots "
                f"{'sharing one KV pool' if engine.kv_unified else 'with a KV cache each'}, "
                f"n_batch={engine.n_batch}, n_threads={engine.n_threads})",
                file=sys.stderr,
            )
        return engine


def is_live(engine: _native.Engine | None) -> TypeGuard[_native.Engine]:
    """Whether `engine` can serve requests in this process: not None, and not inherited through fork()."""
    return engine is not None and id(engine) not in _inherited


# -- fork() ---------------------------------------------------------------------------------
#
# fork() copies only the calling thread: in the child, every engine's decoding thread is gone, and
# a mutex that one of them held at that moment stays locked forever. The child therefore never
# calls into an inherited engine, not even to free it (its destructor joins the missing thread and
# takes its mutex: a hang). Each one gets a reference that is never released, so not even the
# interpreter's teardown frees it. The leak costs next to nothing: its memory (KV cache included)
# is pages shared with the parent, copy-on-write, that the child never writes. Instances holding
# one see it through `is_live` and make a fresh engine on their next call; the native registry
# hands it the same loaded weights, shared the same way.


def _before_fork() -> None:
    # No model or engine half made (native registries locked) while memory is copied.
    _lock.acquire()


def _after_fork_in_parent() -> None:
    _lock.release()


def _after_fork_in_child() -> None:
    global _lock, _engines, _forked
    for engine in list(_engines.values()):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(engine))
        _inherited.add(id(engine))
    _engines = weakref.WeakValueDictionary()
    _lock = threading.RLock()  # the parent's is held by the forking thread (_before_fork)
    _forked = True


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


# -- interpreter exit -------------------------------------------------------------------------


def _shutdown() -> None:
    # Engine threads must stop before the interpreter tears down what they use. Requests still
    # running end with "the engine was shut down"; the threads waiting on them stop quietly
    # (_stop_thread_at_exit) instead of taking that error into user code.
    global _exiting
    loading = not _lock.acquire(timeout=_EXIT_GRACE_S)  # a model being loaded: let it finish
    try:
        _exiting = True
        if _forked:
            # The native shutdown would stop the inherited engines too (see fork() above).
            for engine in list(_engines.values()):
                engine.shutdown()
        else:
            _native.shutdown()
    finally:
        if not loading:
            _lock.release()
    # Give the threads running in this package the GIL to stop in (they stop at their next wait on
    # an engine). Once the interpreter finalizes, a daemon thread that takes the GIL back on
    # returning from a native call is ended by pthread_exit inside nanobind's (noexcept) GIL guard,
    # and std::terminate aborts the process.
    deadline = time.monotonic() + _EXIT_GRACE_S
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


atexit.register(_shutdown)


def _stop_thread_at_exit() -> None:
    """Park this thread for good if the interpreter is exiting and it is not the main thread.

    At exit the interpreter joins the non-daemon threads, runs the atexit handlers (ours shuts the
    engines down) and then freezes the daemon threads wherever they are. A daemon thread waiting on
    a request is woken by the shutdown first, with an error: it freezes here instead, a little
    early, so that the error never reaches user code (a traceback on stderr, a retry, a truncated
    result taken for a whole one).
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


def iter_chunks(request: _native.Request) -> Iterator[_native.Chunk]:
    """Yield a request's chunks as they come; closing the iterator cancels the request."""
    try:
        while True:
            with _QUIET_AT_EXIT:
                chunk = request.next()
            if chunk is None:
                return
            yield chunk
    finally:
        request.cancel()


def wait(request: _native.Request) -> list[_native.Chunk]:
    """Block until the request is done; all its chunks."""
    with quiet_at_exit():
        return list(request.wait())


# -- text sent to llama.cpp -------------------------------------------------------------------

_Text = TypeVar("_Text", bound="str | None")


def valid_text(text: _Text, what: str) -> _Text:
    """`text` (or None) if llama.cpp can take it; otherwise a ValueError naming `what` and the place.

    A Python str can hold lone surrogates ("\\ud800": from os.fsdecode of undecodable bytes, a JSON
    escape, a truncated UTF-16 pair), which have no UTF-8 form. The check costs at most one pass
    over the text, and none for ASCII text (`isascii` reads a flag of the string).
    """
    if isinstance(text, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(_surrogate_message(what, e.start)) from None
    return text


def valid_texts(texts: list[str], what: str) -> list[str]:
    """Each of `texts` checked by `valid_text` ("stop[1] contains ...")."""
    for i, text in enumerate(texts):
        valid_text(text, f"{what}[{i}]")
    return texts


def json_text(value: Any, what: str) -> str:
    """`value` as JSON for llama.cpp, which must be valid Unicode; an error names the string at fault."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        return valid_text(text, what)
    except ValueError:
        found = _find_surrogate(value, what)
        if found is None:
            raise
        raise ValueError(_surrogate_message(*found)) from None


def _find_surrogate(value: Any, where: str) -> tuple[str, int] | None:
    """The first string in a JSON-like value that is not valid Unicode: its path and the index."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return where, e.start
        return None
    items: Any = ()
    if isinstance(value, dict):
        for key in value:
            found = _find_surrogate(key, f"a key in {where}")
            if found is not None:
                return found
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    for key, item in items:
        found = _find_surrogate(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def _surrogate_message(what: str, index: int) -> str:
    return f"{what} contains a lone surrogate at index {index}; text must be valid Unicode"


def timeout_message(timeout: float) -> str:
    """The message of the TimeoutError of a request that ran past its `timeout`."""
    return f"the call took longer than timeout={timeout:g} s (waiting for a free slot included); it was cancelled"


class AsyncRequest:
    """A request whose output arrives through the event loop.

    The engine writes a byte to a pipe when output is ready; the loop watches the pipe, so no
    thread waits per request and the loop is never blocked. Leaving `batches()` early (a
    cancelled task, a closed stream) cancels the request. With a `timeout` (seconds from
    submission), `batches()` raises TimeoutError past it, which cancels the request too.
    """

    def __init__(self, engine: _native.Engine, params: _native.RequestParams, timeout: float | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._expired = False
        # A pooled pipe, never closed: see _deadline (a cancelled request's engine may still write its
        # last byte after we are gone, and a closed descriptor's number is soon another file's).
        from langchain_llamacpp._deadline import _borrow_pipe

        self._pipe = _borrow_pipe()
        self._read_fd, self._write_fd = self._pipe.read_fd, self._pipe.write_fd
        self._ready = asyncio.Event()
        self._closed = False
        self._loop.add_reader(self._read_fd, self._on_readable)
        try:
            with quiet_at_exit():
                self.request: _native.Request = engine.submit(params, self._write_fd)
        except BaseException:
            self.close()
            raise
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        self._expired = True
        self._ready.set()

    def _on_readable(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)
        self._ready.set()

    async def batches(self) -> AsyncIterator[list[_native.Chunk]]:
        """Chunks as they become ready, a list at a time."""
        try:
            while True:
                if self._expired and not self.request.done:
                    raise TimeoutError(timeout_message(self._timeout or 0.0))
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
        self._loop.remove_reader(self._read_fd)
        from langchain_llamacpp._deadline import _return_pipe

        with contextlib.suppress(BlockingIOError):
            os.read(self._read_fd, 4096)
        _return_pipe(self._pipe)
