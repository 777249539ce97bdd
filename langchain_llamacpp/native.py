"""llama.cpp without LangChain: the low-level API the classes are built on.

Load a model, tokenize, evaluate tokens into a sequence slot and read its logits, edit the KV cache,
generate with the engine's batching and sampling, embed, rerank (an engine with ``embeddings=True,
pooling=4`` on a reranking model scores `Model.rerank_tokens` pairs with `Engine.rerank`). Everything
here releases the GIL while it works, and these names are the stable surface (the `_native` module behind them is not)::

    from langchain_llamacpp import native

    model = native.load_model("model.gguf")
    engine = native.create_engine(model, n_ctx=2048, n_seq=2)

    tokens = model.tokenize("The capital of France is", add_special=True)
    logits = engine.evaluate(0, tokens)[-1]  # slot 0, the next token's logits
    engine.kv_copy(0, 1)  # slot 1 branches from the same prefix
    engine.kv_remove(0, 0)  # and slot 0 starts over

    request = native.RequestParams()
    request.prompt = tokens
    request.max_tokens = 16
    request.sampling.temperature = 0.0
    print("".join(chunk.text for chunk in engine.submit(request).wait()))

`load_model` and `create_engine` share models and engines with the LangChain classes (the same file
with the same settings is loaded once), so a `ChatLlamaCpp` and low-level code can work on one model.

Also here: a `Chunk` carries a token's text, logprob and `TopLogprob` alternatives; `Engine.tokenize_media`
gives a `MediaPrompt` (images or audio at the projector's markers) to set as `RequestParams.media`;
`SamplingParams.grammar_triggers` (`GrammarTrigger`) make a grammar lazy; `ChatTemplates` and `ChatParser`
render a model's chat template (into a `RenderResult`) and parse its output; `Request.usage` (a `Usage`) and
`Engine.stats()` (an `EngineStats`) are a request's and an engine's counters; `grammar_error`,
`json_schema_to_grammar` and `check_chat_template` check what strangers write; `MAX_SEQUENCES` (`n_seq`),
`MAX_DRAFT_TOKENS` (`draft_max`) and `MAX_MEDIA_BYTES` (one image or audio file) are limits the engine
enforces; `system_info`, `rpc_available`, `gpu_available` and `LLAMA_CPP_BUILD` say what this build of llama.cpp
is, for bug reports. Every class and field is typed in the stubs shipped beside the extension (`_native.pyi`).
"""

from __future__ import annotations

import os
from typing import Any

from langchain_llamacpp import _native, _registry
from langchain_llamacpp._native import (
    LLAMA_CPP_BUILD,
    MAX_DRAFT_TOKENS,
    MAX_MEDIA_BYTES,
    MAX_SEQUENCES,
    ChatParser,
    ChatTemplates,
    Chunk,
    Engine,
    EngineParams,
    EngineStats,
    GrammarTrigger,
    MediaPrompt,
    Model,
    ModelParams,
    RenderResult,
    Request,
    RequestParams,
    SamplingParams,
    TopLogprob,
    Usage,
    check_chat_template,
    gpu_available,
    grammar_error,
    json_schema_to_grammar,
    rpc_available,
)

__all__ = [
    "LLAMA_CPP_BUILD",
    "MAX_DRAFT_TOKENS",
    "MAX_MEDIA_BYTES",
    "MAX_SEQUENCES",
    "ChatParser",
    "ChatTemplates",
    "Chunk",
    "Engine",
    "EngineParams",
    "EngineStats",
    "GrammarTrigger",
    "MediaPrompt",
    "Model",
    "ModelParams",
    "RenderResult",
    "Request",
    "RequestParams",
    "SamplingParams",
    "TopLogprob",
    "Usage",
    "check_chat_template",
    "create_engine",
    "gpu_available",
    "grammar_error",
    "json_schema_to_grammar",
    "load_model",
    "rpc_available",
    "system_info",
]


def load_model(
    path: str | os.PathLike[str], *, verbose: bool = False, progress: bool | None = None, **settings: Any
) -> Model:
    """Load a GGUF model (or return the copy already loaded with the same settings).

    `settings` are `ModelParams` fields: `n_gpu_layers`, `use_mmap`, `use_mlock`, `vocab_only`,
    `check_tensors`, `repack`, `kv_overrides` (a dict of metadata key to `"int:N"`, `"float:X"`,
    `"bool:B"` or `"str:S"`), `rpc_servers` (``["host:port", ...]`` of llama.cpp ``rpc-server``
    processes that take the offloaded layers), the placement (`main_gpu`, `split_mode` 0/1/2,
    `tensor_split`, `devices`, `override_tensor` as ``["regex=buffer type", ...]``, `n_cpu_moe`) and `fit`
    (fit `n_gpu_layers` to free device memory, for an engine of default settings). `progress` shows a
    progress bar (default: when `verbose`).
    """
    unknown = set(settings) - _registry.MODEL_FIELDS
    if unknown:
        raise TypeError(f"unknown model settings {sorted(unknown)}; known: {', '.join(sorted(_registry.MODEL_FIELDS))}")
    path = os.path.expanduser(os.fspath(path))  # a missing file: Model.load raises FileNotFoundError
    settings.update({name: tuple(settings.get(name) or ()) for name in _registry.MODEL_LISTS})
    settings["kv_overrides"] = tuple(sorted((settings.get("kv_overrides") or {}).items()))
    config = _registry.ModelConfig(path=path, **settings)
    return _registry.load_model(config, verbose, progress)


def create_engine(model: Model, *, verbose: bool = False, **settings: Any) -> Engine:
    """An engine (a llama.cpp context with `n_seq` sequence slots and its decoding thread) on `model`.

    `settings` are `EngineParams` fields: `n_ctx` (per slot; 0: the trained length; default the trained
    length capped at 4096), `n_batch`, `n_ubatch`, `n_seq`, `n_threads`, `n_threads_batch`, `f16_kv`,
    `cache_type_k`, `cache_type_v`, `flash_attn`, `rope_scaling_type` and `yarn_*`, `embeddings`, `pooling`,
    `lora_path`, `lora_scale`, `batch_invariant`, ... An
    engine with the same model and settings as an existing one is that engine.
    """
    unknown = set(settings) - _registry.ENGINE_FIELDS
    if unknown:
        raise TypeError(
            f"unknown engine settings {sorted(unknown)}; known: {', '.join(sorted(_registry.ENGINE_FIELDS))}"
        )
    params = model.params
    given: dict[str, Any] = {name: getattr(params, name) for name in _registry.MODEL_FIELDS}
    given.update({name: tuple(given[name]) for name in _registry.MODEL_LISTS})
    given["kv_overrides"] = tuple(sorted(params.kv_overrides.items()))
    config = _registry.ModelConfig(path=model.path, **given)
    return _registry.get_engine(config, _registry.EngineConfig(**settings), verbose)


def system_info() -> str:
    """The backends llama.cpp was built with and the CPU features each uses (AVX2, NEON, ...), as its tools print.

    A wheel carries ggml's CPU backend built for several instruction sets and loads the best one for this CPU;
    its file is named at the end (``CPU_BACKEND = libggml-cpu-haswell.so``). A source build has one, built in.
    """
    return _native.system_info()
