"""Access to the native engine: shared models and engines, logging, and token streams.

Nothing here knows about LangChain; the model classes build on it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, fields
from typing import Any

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


ENGINE_FIELDS = frozenset(f.name for f in fields(EngineConfig))
MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig)) - {"path"}

_lock = threading.Lock()
_engines: weakref.WeakValueDictionary[tuple[ModelConfig, EngineConfig], _native.Engine] = weakref.WeakValueDictionary()


def load_model(config: ModelConfig, verbose: bool = False) -> _native.Model:
    """Load (or reuse) the weights for `config`."""
    params = _native.ModelParams()
    params.path = os.fspath(config.path)
    params.n_gpu_layers = config.n_gpu_layers
    params.use_mmap = config.use_mmap
    params.use_mlock = config.use_mlock
    params.vocab_only = config.vocab_only
    params.check_tensors = config.check_tensors
    params.repack = config.repack
    params.kv_overrides = dict(config.kv_overrides)
    try:
        model = _native.Model.load(params)
    finally:
        flush_native_logs(verbose)
    return model


def get_engine(model_config: ModelConfig, engine_config: EngineConfig, verbose: bool = False) -> _native.Engine:
    """The engine for these settings, shared by every instance that asks for the same ones.

    Sharing the engine shares its prompt cache: an `LlamaCpp` and a `ChatLlamaCpp` on the same
    file and settings reuse each other's cached prefixes.
    """
    key = (model_config, engine_config)
    with _lock:
        engine = _engines.get(key)
        if engine is not None:
            return engine
        model = load_model(model_config, verbose)
        params = _native.EngineParams()
        for name in ENGINE_FIELDS:
            setattr(params, name, getattr(engine_config, name))
        try:
            engine = _native.Engine.create(model, params)
        finally:
            flush_native_logs(verbose)
        _engines[key] = engine
        if verbose:
            print(
                f"langchain_llamacpp: loaded {model.description} from {model_config.path} in "
                f"{model.load_time_ms:.0f} ms (n_ctx={engine.n_ctx} x {engine.n_seq} seq, "
                f"n_batch={engine.n_batch}, n_threads={engine.n_threads})",
                file=sys.stderr,
            )
        return engine


def _shutdown() -> None:
    # Engine threads must stop before the interpreter tears down what they use.
    _native.shutdown()


atexit.register(_shutdown)


def iter_chunks(request: _native.Request) -> Iterator[_native.Chunk]:
    """Yield a request's chunks as they come; closing the iterator cancels the request."""
    try:
        while True:
            chunk = request.next()
            if chunk is None:
                return
            yield chunk
    finally:
        request.cancel()


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
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._ready = asyncio.Event()
        self._closed = False
        self._loop.add_reader(self._read_fd, self._on_readable)
        try:
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
        os.close(self._read_fd)
        os.close(self._write_fd)


def apply_overrides(target: Any, values: dict[str, Any], allowed: frozenset[str], what: str) -> None:
    for key, value in values.items():
        if key not in allowed:
            raise ValueError(f"unknown {what} parameter {key!r}; known: {', '.join(sorted(allowed))}")
        setattr(target, key, value)
