"""One declaration per setting: the table from which the native configs, the model_kwargs each class
accepts, the per-call options and their conversions are derived.

A row names a setting as the classes take it (a pydantic field, or a ``model_kwargs`` key where a
class has no field for it), the native struct and attribute it ends in, and how a value becomes the
native one. The fields (``_params.py``, ``chat_models.py``, ``embeddings.py``) keep the defaults and
the documentation; a setting that is None, or not given, keeps the native struct's default
(llama.cpp's), so no default is written here. At import the table is checked against the native
structs and against the frozen configs in ``_registry`` that key the shared models and engines.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any, Literal

import langchain_llamacpp._native as _native
import langchain_llamacpp._registry as _registry
from langchain_llamacpp._text import valid_text
from langchain_llamacpp.grammars import resolve_grammar_path

# The classes, as rows name them (each class says which one it is: `_settings_class`).
LLM, CHAT, EMBEDDINGS, RERANKER = "LlamaCpp", "ChatLlamaCpp", "LlamaCppEmbeddings", "LlamaCppReranker"
ALL = frozenset({LLM, CHAT, EMBEDDINGS, RERANKER})
GENERATION = frozenset({LLM, CHAT})

# Where a setting ends: ModelParams, EngineParams (each through its frozen config in _registry),
# SamplingParams, RequestParams, or nowhere native ("python": used by the classes themselves).
Target = Literal["model", "engine", "sampling", "request", "python"]

# Slots when n_seq is not given: a batch of 8 runs ~2.2x as fast as 8 calls in a row on gemma-3-270m here,
# and the shared KV pool makes them free when idle.
DEFAULT_N_SEQ = 8

# llama_pooling_type values, by LlamaCppEmbeddings.pooling_type; rank is LlamaCppReranker's own
POOLING = {"mean": 1, "cls": 2, "last": 3}
RANK_POOLING = 4


@dataclass(frozen=True)
class Setting:
    """One row: a setting, where it ends and how it gets there."""

    name: str  # the field, per-call option or model_kwargs key
    target: Target
    native: str = ""  # the native attribute; "": the same as `name`
    # From the value (None where not given) and those of `reads`, to the native value; None keeps the
    # native default. Without it a value goes as it is.
    convert: Callable[..., Any] | None = None
    reads: tuple[str, ...] = ()
    per_call: bool = False  # also an option of invoke/stream/generate
    model_kwargs: bool = False  # may come through model_kwargs in a class without a field of that name
    classes: frozenset[str] = ALL
    file: str = ""  # a path checked at construction; what the file is ("model file")

    @property
    def attr(self) -> str:
        return self.native or self.name

    def value(self, get: Callable[[str], Any]) -> Any:
        """The native value, from `get` (a setting's value by name; None where not given)."""
        value = get(self.name)
        if self.convert is None:
            return value
        return self.convert(value, *(get(name) for name in self.reads))


def _given(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`convert` for a given value; None stays None (the native default)."""
    return lambda value: None if value is None else convert(value)


def rpc_endpoints(servers: list[str] | str | None) -> tuple[str, ...]:
    """``["host:port", ...]`` or llama-cpp-python's ``"host:port,host:port"``, as a tuple."""
    if isinstance(servers, str):
        servers = servers.split(",")
    return tuple(s.strip() for s in servers or () if s.strip())


def kv_override_specs(overrides: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """GGUF metadata overrides as llama.cpp's ``--override-kv`` takes them: ``"int:8"``, ``"str:x"``, ..."""
    return tuple(sorted((str(key), _override_spec(value)) for key, value in overrides.items()))


def _override_spec(value: Any) -> str:
    if isinstance(value, bool):
        return f"bool:{str(value).lower()}"
    if isinstance(value, int):
        return f"int:{value}"
    if isinstance(value, float):
        return f"float:{value}"
    return f"str:{value}"


def one_grammar(grammar: str | None, grammar_path: str | os.PathLike[str] | None) -> None:
    """A request has one grammar: given as text or as a file, not both."""
    if grammar and grammar_path:
        raise ValueError("give either grammar or grammar_path, not both")


def grammar_text(grammar: str | None, grammar_path: str | os.PathLike[str] | None) -> str | None:
    """The grammar's text: `grammar` itself, or the file `grammar_path` names (a bundled one by name)."""
    one_grammar(grammar, grammar_path)
    if grammar:
        return str(grammar)
    if grammar_path:
        return Path(resolve_grammar_path(grammar_path)).read_text(encoding="utf-8")
    return None


def _grammar(grammar: str | None, grammar_path: str | None) -> str | None:
    return valid_text(grammar_text(grammar, grammar_path) or None, "grammar")


def _n_gpu_layers(layers: int | None, servers: list[str] | str | None) -> int | None:
    # None: none, or all of them where the layers have RPC servers to go to.
    return -1 if layers is None and rpc_endpoints(servers) else layers


def _repack(repack: bool | None, batch_invariant: bool | None) -> bool:
    # Repacked weights have kernels whose rounding depends on the batch: off under batch_invariant.
    return not batch_invariant if repack is None else bool(repack)


def _n_batch(n_batch: int | None) -> int:
    return 0 if n_batch is None else n_batch  # 0: the context (LlamaCppEmbeddings' None)


def _n_ubatch(n_ubatch: int | None, n_batch: int) -> int:
    return n_ubatch or n_batch


def _n_seq(n_seq: int | None, batch_invariant: bool | None) -> int:
    return n_seq or (1 if batch_invariant else DEFAULT_N_SEQ)


def _pooling(number: int | None, name: str | None) -> int | None:
    return POOLING[name] if name else number


# ggml type numbers of the KV cache types (llama-cpp-python's type_k/type_v) -> llama.cpp's names.
GGML_CACHE_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 20: "iq4_nl", 30: "bf16"}
SPLIT_MODES = {"none": 0, "layer": 1, "row": 2}
ROPE_SCALING = {"none": 0, "linear": 1, "yarn": 2}


def cache_type_name(number: Any, key: str) -> str:
    """llama.cpp's name of a KV cache type given as a ggml type number (llama-cpp-python's `type_k`)."""
    if isinstance(number, bool) or not isinstance(number, int) or number not in GGML_CACHE_TYPES:
        known = ", ".join(f"{n} ({name})" for n, name in GGML_CACHE_TYPES.items())
        raise ValueError(f"{key}={number!r} is not a KV cache type's ggml number; known: {known}")
    return GGML_CACHE_TYPES[number]


def _cache_type(name: str | None, number: int | None, key: str) -> str | None:
    # A name given wins; llama-cpp-python's ggml type number otherwise; neither: by f16_kv (natively).
    return name if name is not None else None if number is None else cache_type_name(number, key)


def _by_name(table: Mapping[str, int], field: str) -> Callable[[str | int], int]:
    """A setting given by name (or as llama.cpp's number) -> its number."""

    def convert(value: str | int) -> int:
        if isinstance(value, str):
            if value not in table:
                raise ValueError(f"{field}={value!r}: known: {', '.join(table)}")
            return table[value]
        if value not in table.values():
            raise ValueError(f"{field}={value!r}: known: {', '.join(f'{n} ({v})' for n, v in table.items())}")
        return int(value)

    return convert


def _names(value: list[str] | str) -> tuple[str, ...]:
    """A list of names, or llama.cpp's comma-separated string of them."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(valid_text(str(item).strip(), "name") for item in items if str(item).strip())


def _breakers(breakers: list[str]) -> list[str]:
    return [valid_text(b, "dry_sequence_breakers") for b in breakers]


# A device that takes offloaded layers (a GPU backend): only there is anything fitted to its memory.
GPU_OFFLOAD = _native.gpu_available()


def _fit(_: None, layers: int | None, servers: Any, *placement: Any) -> bool | None:
    # n_gpu_layers not given: fitted to free device memory on a build with a GPU backend, as llama.cpp's tools
    # do; not where RPC servers take all layers or a placement is given. A CPU-only build keeps the settings
    # (and so the shared models and engines) as they were.
    split_mode = placement[-1]
    no_placement = not any(placement[:-1]) and split_mode not in ("row", 2)
    if GPU_OFFLOAD and layers is None and not rpc_endpoints(servers) and no_placement:
        return True
    return None


def _cache_dir(path: str | os.PathLike[str]) -> str:
    # Absolute: the engine (shared by its settings) keeps writing there whatever the working directory.
    return valid_text(os.path.abspath(os.path.expanduser(os.fspath(path))), "prompt_cache_dir") or ""


def _max_tokens(n: int | None) -> int:
    return -1 if n is None or n < 0 else int(n)  # -1: no limit


def _n_probs(logprobs: int | None) -> int | None:
    # 0: none; -1: the sampled token's own only (logprobs=0); n: with n alternatives.
    return None if logprobs is None else (int(logprobs) if logprobs > 0 else -1)


def _logit_bias(bias: Mapping[int, float]) -> list[tuple[int, float]]:
    return [(int(token), float(value)) for token, value in bias.items()]


def _loading(name: str, **row: Any) -> Setting:
    return Setting(name, "model", model_kwargs=True, **row)


def _context(name: str, **row: Any) -> Setting:
    return Setting(name, "engine", model_kwargs=True, **row)


def _sampling(name: str, **row: Any) -> Setting:
    return Setting(name, "sampling", per_call=True, classes=GENERATION, **row)


def _in_request(name: str, **row: Any) -> Setting:
    return Setting(name, "request", per_call=True, classes=GENERATION, **row)


def _call_option(name: str) -> Setting:
    return Setting(name, "python", per_call=True, classes=GENERATION)


SETTINGS: tuple[Setting, ...] = (
    # -- loading the model (ModelParams) ----------------------------------------------------
    Setting("model_path", "model", "path", file="model file"),
    _loading("n_gpu_layers", convert=_n_gpu_layers, reads=("rpc_servers",)),
    _loading("use_mmap"),
    _loading("use_mlock"),
    _loading("vocab_only"),
    _loading("check_tensors", convert=_given(bool)),
    _loading("repack", convert=_repack, reads=("batch_invariant",)),
    _loading("kv_overrides", convert=_given(kv_override_specs)),
    _loading("rpc_servers", convert=_given(rpc_endpoints)),
    _loading("main_gpu"),
    _loading("split_mode", convert=_given(_by_name(SPLIT_MODES, "split_mode"))),
    _loading("tensor_split", convert=_given(lambda shares: tuple(float(x) for x in shares))),
    _loading("devices", convert=_given(_names)),
    _loading("override_tensor", convert=_given(_names)),
    _loading("n_cpu_moe"),
    Setting(
        "fit",
        "model",
        convert=_fit,
        reads=("n_gpu_layers", "rpc_servers", "tensor_split", "override_tensor", "n_cpu_moe", "split_mode"),
    ),
    # -- the context (EngineParams) ---------------------------------------------------------
    _context("n_ctx"),
    _context("n_batch", convert=_n_batch),
    _context("n_ubatch", convert=_n_ubatch, reads=("n_batch",), classes=GENERATION),
    _context("n_seq", convert=_n_seq, reads=("batch_invariant",), classes=GENERATION),
    _context("n_threads"),
    _context("n_threads_batch"),
    _context("f16_kv"),
    _context("cache_type_k", convert=lambda name, number: _cache_type(name, number, "type_k"), reads=("type_k",)),
    _context("cache_type_v", convert=lambda name, number: _cache_type(name, number, "type_v"), reads=("type_v",)),
    Setting("type_k", "python", model_kwargs=True),  # llama-cpp-python's cache_type_k, read into it
    Setting("type_v", "python", model_kwargs=True),
    _context("flash_attn", convert=_given(int)),
    _context("rope_freq_base"),
    _context("rope_freq_scale"),
    _context("rope_scaling_type", convert=_given(_by_name(ROPE_SCALING, "rope_scaling_type"))),
    _context("yarn_ext_factor"),
    _context("yarn_attn_factor"),
    _context("yarn_beta_fast"),
    _context("yarn_beta_slow"),
    _context("yarn_orig_ctx"),
    _context("swa_full"),
    _context("offload_kqv"),
    _context("kv_unified", convert=_given(int), classes=GENERATION),
    _context("lora_path", convert=_given(os.path.expanduser), file="LoRA adapter"),
    _context("lora_scale"),
    _context("batch_invariant"),
    Setting("embeddings", "engine", convert=lambda _: True, classes=frozenset({EMBEDDINGS, RERANKER})),
    Setting("pooling", "engine", convert=_pooling, reads=("pooling_type",), classes=frozenset({EMBEDDINGS})),
    Setting("mmproj_path", "engine", classes=frozenset({CHAT}), file="projector (mmproj) file"),
    _context("draft_model_path", classes=GENERATION, file="draft model file"),
    _context("prompt_lookup", classes=GENERATION),
    _context("draft_max", classes=GENERATION),
    _context("draft_min", classes=GENERATION),
    _context("draft_p_min", classes=GENERATION),
    _context("draft_n_ctx", classes=GENERATION),
    _context("prompt_cache_dir", convert=_given(_cache_dir), classes=GENERATION),
    _context("prompt_cache_max_bytes", classes=GENERATION),
    _context("prompt_cache_min_tokens", classes=GENERATION),
    # -- sampling, per call (SamplingParams) ------------------------------------------------
    _sampling("temperature", convert=float),
    _sampling("top_p", convert=float),
    _sampling("top_k", convert=int),
    _sampling("min_p", convert=float),
    _sampling("typical_p", convert=float),
    _sampling("repeat_penalty", convert=float),
    _sampling("last_n_tokens_size", native="repeat_last_n", convert=int),
    _sampling("frequency_penalty", convert=float),
    _sampling("presence_penalty", convert=float),
    _sampling("mirostat_mode", native="mirostat", convert=int),
    _sampling("mirostat_tau", convert=float),
    _sampling("mirostat_eta", convert=float),
    _sampling("dry_multiplier", convert=_given(float)),
    _sampling("dry_base", convert=_given(float)),
    _sampling("dry_allowed_length", convert=_given(int)),
    _sampling("dry_penalty_last_n", convert=_given(int)),
    _sampling("dry_sequence_breakers", convert=_given(_breakers)),
    _sampling("xtc_probability", convert=_given(float)),
    _sampling("xtc_threshold", convert=_given(float)),
    _sampling("top_n_sigma", convert=_given(float)),
    _sampling("seed", convert=int),
    _sampling("logit_bias", convert=_given(_logit_bias)),
    _sampling("grammar", convert=_grammar, reads=("grammar_path",)),
    # -- the rest of a request (RequestParams) ----------------------------------------------
    _in_request("max_tokens", convert=_max_tokens),
    _in_request("logprobs", native="n_probs", convert=_n_probs),
    _in_request("ignore_eos", convert=bool),
    # -- per-call options the classes use themselves ----------------------------------------
    _call_option("grammar_path"),  # read into `grammar`
    _call_option("echo"),  # LlamaCpp: the prompt before the completion
    _call_option("suffix"),  # LlamaCpp: the text after it, for fill-in-the-middle
    _call_option("timeout"),  # the call's deadline (_readers.BlockingRequest and AsyncRequest)
)

# Per-call keyword arguments accepted by invoke/stream/generate (besides `stop`).
CALL_OPTIONS = frozenset(row.name for row in SETTINGS if row.per_call)
# The rows that fill a RequestParams (and its SamplingParams) from a call's options.
REQUEST_ROWS = tuple(row for row in SETTINGS if row.target in ("sampling", "request"))

_BY_NAME = {row.name: row for row in SETTINGS}
_BY_NATIVE = {row.attr: row for row in SETTINGS if row.target != "python"}


# -- what a class takes -------------------------------------------------------------------------


def _rows(cls: Any) -> tuple[Setting, ...]:
    return tuple(row for row in SETTINGS if cls._settings_class in row.classes)


@cache
def model_kwargs_keys(cls: Any) -> frozenset[str]:
    """The settings `cls` takes through model_kwargs: the llama.cpp settings it has no field for."""
    return frozenset(row.name for row in _rows(cls) if row.model_kwargs and row.name not in cls.model_fields)


def check_model_kwargs(cls: Any, model_kwargs: Mapping[str, Any]) -> None:
    """A ValueError naming the first key of `model_kwargs` that `cls` does not take, and why."""
    allowed = model_kwargs_keys(cls)
    known = f"known: {', '.join(sorted(allowed))}"
    unknown = sorted(key for key in model_kwargs if key not in _BY_NAME and key not in _BY_NATIVE)
    if unknown:
        raise ValueError(f"unknown model_kwargs {unknown}; {known}")
    for key in model_kwargs:
        if key not in allowed:
            raise ValueError(f"model_kwargs {key!r}: {_misplaced(cls, key)}; {known}")


def _misplaced(cls: Any, key: str) -> str:
    """Why `key`, a setting of some class, is not one of `cls`'s model_kwargs."""
    name = cls.__name__
    if key in cls.model_fields:
        return f"it is a field of {name}: pass {key}=... instead"
    row = _BY_NAME.get(key) or _BY_NATIVE[key]
    if row.name in cls.model_fields:
        return f"it is llama.cpp's name for the field {row.name}: pass {row.name}=... instead"
    if cls._settings_class not in row.classes:
        return f"it is a setting of {' and '.join(sorted(row.classes))}, not of {name}"
    return f"{name} sets it itself"


def values(instance: Any, target: Target) -> dict[str, Any]:
    """The native values of `instance`'s settings for `target`, by attribute; those not given are left out."""
    given = instance.model_kwargs
    names = type(instance).model_fields

    def get(name: str) -> Any:
        return getattr(instance, name) if name in names else given.get(name)

    found = {}
    for row in _rows(type(instance)):
        if row.target == target:
            value = row.value(get)
            if value is not None:
                found[row.attr] = value
    return found


def model_config(instance: Any) -> _registry.ModelConfig:
    """The settings `instance` loads its model with (the key of the shared model)."""
    return _registry.ModelConfig(**values(instance, "model"))


def engine_config(instance: Any) -> _registry.EngineConfig:
    """The settings of `instance`'s engine (with `model_config`, the key of the shared engine)."""
    return _registry.EngineConfig(**values(instance, "engine"))


def file_rows(cls: Any) -> tuple[Setting, ...]:
    """The fields of `cls` that name a file, checked at construction."""
    return tuple(row for row in _rows(cls) if row.file and row.name in cls.model_fields)


# -- the table against the native structs and the cache keys ---------------------------------------


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted(value.items()))
    return tuple(value) if isinstance(value, list) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)  # the native floats are float32
    return bool(_comparable(a) == _comparable(b))


# Native fields with no row, on purpose, and what sets each instead. Any other native field without a
# row fails the check at import: a field added natively gets a row, or a line here with the reason.
INTERNAL: dict[str, dict[str, str]] = {
    "model": {
        "rpc_timeout_ms": "the bound on each RPC server's connection and handshake; its default (5 s) is not "
        "a setting of the classes",
    },
    "engine": {},
    "sampling": {
        name: "set from the chat template's tool-call grammar (_chat_request.request_params)"
        for name in (
            "grammar_lazy",
            "grammar_is_tool_call",
            "grammar_triggers",
            "preserved_tokens",
            "generation_prompt",
        )
    }
    | {
        name: "set from the chat template's thinking tags and the chat's reasoning_budget "
        "(_chat_request.request_params)"
        for name in ("reasoning_budget", "reasoning_start", "reasoning_end")
    },
    "request": {
        "prompt": "the call's tokens (_request.request_params)",
        "stop": "the call's `stop` argument after the instance's stop strings (_request.stop_list)",
        "media": "the images and audio in a chat's messages (_chat_request.request_params)",
        "sampling": "the struct that the sampling rows fill",
        "render_special": "the classes' text never shows special tokens; it is for the low-level API",
    },
}


def _native_fields(struct: Any) -> set[str]:
    """A native params struct's fields: the attributes its binding declares (properties of its class)."""
    return {name for name, value in vars(type(struct)).items() if isinstance(value, property)}


def _mismatches() -> list[str]:
    problems = []
    structs = {"model": _native.ModelParams(), "engine": _native.EngineParams()}
    keys = {"model": _registry.ModelConfig, "engine": _registry.EngineConfig}
    request = _native.RequestParams()
    native_of = {**structs, "sampling": request.sampling, "request": request}
    for target, key in keys.items():
        for f in fields(key):
            if f.name in _registry.NOT_PARAMS:
                continue
            if not hasattr(structs[target], f.name):
                problems.append(f"{key.__name__}.{f.name} is not an attribute of the native {target} params")
            elif f.default is not MISSING and not _same(f.default, getattr(structs[target], f.name)):
                problems.append(
                    f"{key.__name__}.{f.name} defaults to {f.default!r}, the native params to "
                    f"{getattr(structs[target], f.name)!r}"
                )
        declared = {row.attr for row in SETTINGS if row.target == target}
        problems += [f"{key.__name__}.{f.name} has no row" for f in fields(key) if f.name not in declared]
    for row in SETTINGS:
        if row.target in keys:
            if row.attr not in {f.name for f in fields(keys[row.target])}:
                problems.append(f"{row.name}: {keys[row.target].__name__} has no field {row.attr}")
        elif row.target != "python" and not hasattr(native_of[row.target], row.attr):
            problems.append(f"{row.name}: the native {row.target} params have no attribute {row.attr}")
    return problems + _unlisted(native_of)


def _unlisted(native_of: dict[str, Any]) -> list[str]:
    """The other way round: each native field has a row or is listed in INTERNAL, not both, and only fields are."""
    problems = []
    for target, struct in native_of.items():
        native_fields = _native_fields(struct)
        declared = {row.attr for row in SETTINGS if row.target == target}
        internal = set(INTERNAL[target])
        problems += [
            f"the native {target} params' {name} has no row (add one, or list it in INTERNAL with the reason)"
            for name in sorted(native_fields - declared - internal)
        ]
        problems += [f"INTERNAL lists {target} {name}, which has a row" for name in sorted(internal & declared)]
        problems += [
            f"INTERNAL lists {target} {name}, not a field of the native params"
            for name in sorted(internal - native_fields)
        ]
    return problems


def _check_against_native() -> None:
    problems = _mismatches()
    if problems:
        raise ImportError(
            "langchain_llamacpp's settings table does not match its native extension (rebuild it: ./dev build): "
            + "; ".join(problems)
        )


_check_against_native()
