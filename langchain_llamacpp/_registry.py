"""The shared models and engines: one per model file and settings, kept while an instance uses it.

Their keys are frozen copies of ModelParams and EngineParams (`ModelConfig`, `EngineConfig`), checked
at import by `_settings` against the native structs and its table of settings. A load shows its
progress (`_LoadProgress`). Nothing here knows about LangChain; `native.py` and the classes build on it.

The engines' threads meet fork() and interpreter exit here too: see the sections at the end.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import sys
import threading
import weakref
from dataclasses import dataclass, fields, replace
from typing import Any, TypeGuard

import langchain_llamacpp._lifecycle as _lifecycle
import langchain_llamacpp._native as _native
from langchain_llamacpp._logs import flush_native_logs, logger
from langchain_llamacpp._text import valid_text

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
    main_gpu: int = 0
    split_mode: int = 1
    tensor_split: tuple[float, ...] = ()
    devices: tuple[str, ...] = ()
    override_tensor: tuple[str, ...] = ()
    n_cpu_moe: int = 0
    # n_gpu_layers (and a context not given) fitted to free device memory when the model loads
    # (`get_engine`; a build without a GPU backend ignores it).
    fit: bool = False


@dataclass(frozen=True)
class EngineConfig:
    n_ctx: int = -1
    n_batch: int = 512
    n_ubatch: int = 512
    n_seq: int = 1
    n_threads: int = 0
    n_threads_batch: int = 0
    f16_kv: bool = True
    cache_type_k: str = ""
    cache_type_v: str = ""
    flash_attn: int = -1
    rope_freq_base: float = 0.0
    rope_freq_scale: float = 0.0
    rope_scaling_type: int = -1
    yarn_ext_factor: float = -1.0
    yarn_attn_factor: float = -1.0
    yarn_beta_fast: float = -1.0
    yarn_beta_slow: float = -1.0
    yarn_orig_ctx: int = 0
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
    # The prompt cache on disk (native/prompt_cache.h).
    prompt_cache_dir: str = ""
    prompt_cache_max_bytes: int = 2 << 30
    prompt_cache_min_tokens: int = 512


ENGINE_FIELDS = frozenset(f.name for f in fields(EngineConfig))
# Settings of the engine that are not EngineParams fields: given to Engine.create otherwise.
NOT_PARAMS = frozenset({"draft_model_path"})
MODEL_FIELDS = frozenset(f.name for f in fields(ModelConfig)) - {"path"}
# ModelConfig's tuples that are lists in ModelParams.
MODEL_LISTS = frozenset({"rpc_servers", "tensor_split", "devices", "override_tensor"})

# Held while a model or engine is being made; fork() waits for it (see _before_fork).
_lock = threading.RLock()
_engines: weakref.WeakValueDictionary[tuple[ModelConfig, EngineConfig], _native.Engine] = weakref.WeakValueDictionary()
# ids of the engines this process inherited through fork(); they are never freed, so no id is reused.
_inherited: set[int] = set()
_forked = False
# At exit, how long to wait for a model being loaded, and for threads in this package to stop.
_EXIT_GRACE_S = 5.0


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


def load_model(
    config: ModelConfig,
    verbose: bool = False,
    progress: bool | None = None,
    fit_for: _native.EngineParams | None = None,
) -> _native.Model:
    """Load (or reuse) the weights for `config`; `progress` (default: `verbose`) shows a progress bar.

    With `config.fit`, the first load fits the layers to free device memory for an engine with `fit_for`'s
    settings (llama.cpp's common_fit_params; nothing on a build without a GPU backend) and logs the choice.
    """
    valid_text(config.path, "model_path")
    for key, value in config.kv_overrides:
        valid_text(key, "kv_overrides key")
        valid_text(value, f"kv_overrides[{key!r}]")
    params = _native.ModelParams()
    params.path = os.fspath(config.path)
    for name in MODEL_FIELDS - {"kv_overrides"} - MODEL_LISTS:
        setattr(params, name, getattr(config, name))
    params.kv_overrides = dict(config.kv_overrides)
    for name in MODEL_LISTS:
        setattr(params, name, [valid_text(s, name) if isinstance(s, str) else s for s in getattr(config, name)])
    bar = _LoadProgress(config.path) if (verbose if progress is None else progress) else None
    with _lock:  # not while fork() copies the native model registry
        try:
            model = _native.Model.load(params, bar, fit_for)
        finally:
            if bar is not None:
                bar.close()
            flush_native_logs(verbose)
    if model.fit_summary:
        logger.info("%s: %s", os.path.basename(config.path), model.fit_summary)
        if verbose:
            print(f"langchain_llamacpp: {os.path.basename(config.path)}: {model.fit_summary}", file=sys.stderr)
    return model


def get_engine(
    model_config: ModelConfig, engine_config: EngineConfig, verbose: bool = False, progress: bool | None = None
) -> _native.Engine:
    """The engine for these settings, shared by every instance that asks for the same ones.

    Sharing the engine shares its prompt cache: an `LlamaCpp` and a `ChatLlamaCpp` on the same
    file and settings reuse each other's cached prefixes.
    """
    key = (model_config, engine_config)
    with _lifecycle.quiet_at_exit(), _lock:  # the lock is released before the thread stops
        if _lifecycle.exiting():  # the engines have been shut down
            raise RuntimeError("the interpreter is exiting: no engine can be used")
        engine = _engines.get(key)
        if engine is not None:
            return engine
        params = _native.EngineParams()
        for name in ENGINE_FIELDS - NOT_PARAMS:
            setattr(params, name, getattr(engine_config, name))
        valid_text(params.lora_path, "lora_path")
        model = load_model(model_config, verbose, progress, fit_for=params)
        if model_config.fit and engine_config.n_ctx < 0 and model.fit_n_ctx >= 0:
            params.n_ctx = model.fit_n_ctx  # the context the fit chose (0: the trained length)
        draft = None
        if engine_config.draft_model_path:
            # Its own fit (after the target's), none of the target's tensor names or split.
            draft_config = replace(
                model_config,
                path=engine_config.draft_model_path,
                kv_overrides=(),
                rpc_servers=(),
                tensor_split=(),
                override_tensor=(),
                n_cpu_moe=0,
            )
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
    # (_lifecycle.quiet_at_exit) instead of taking that error into user code.
    loading = not _lock.acquire(timeout=_EXIT_GRACE_S)  # a model being loaded: let it finish
    try:
        _lifecycle.begin_exit()
        if _forked:
            # The native shutdown would stop the inherited engines too (see fork() above).
            for engine in list(_engines.values()):
                engine.shutdown()
        else:
            _native.shutdown()
    finally:
        if not loading:
            _lock.release()
    _lifecycle.wait_for_package_threads(_EXIT_GRACE_S)


atexit.register(_shutdown)
