"""`LlamaCppEmbeddings`: LangChain embeddings from a local GGUF model."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

import langchain_llamacpp._engine as _engine
import langchain_llamacpp._native as _native
from langchain_llamacpp._lifecycle import NativeStateMixin


class LlamaCppEmbeddings(NativeStateMixin, BaseModel, Embeddings):
    """Embeddings with a local GGUF model through llama.cpp.

    Works with embedding models (BERT-style, with their own pooling) and with generative
    models (token embeddings averaged). Vectors are L2-normalised unless ``normalize=False``.

    Instantiate:
        .. code-block:: python

            from langchain_llamacpp import LlamaCppEmbeddings

            embeddings = LlamaCppEmbeddings(model_path="model.gguf")
            vector = embeddings.embed_query("What is llama.cpp?")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str
    """Path to the GGUF model file."""

    n_ctx: int | None = Field(None, ge=0)
    """Longest text in tokens. None: the model's trained length, capped at 4096."""

    n_batch: int = Field(512, ge=1)
    """Tokens evaluated per step; a text must fit in one batch."""

    n_threads: int | None = Field(None, ge=1)
    """Threads. None: the machine's physical cores."""

    n_gpu_layers: int | None = None
    """Layers to offload to the GPU (-1: all)."""

    seed: int = -1
    """Accepted for compatibility with langchain_community."""

    f16_kv: bool = True
    """Keep the KV cache in 16-bit floats."""

    use_mlock: bool = False
    """Lock the weights in RAM."""

    use_mmap: bool = True
    """Map the model file into memory."""

    normalize: bool = True
    """L2-normalise the vectors (cosine similarity becomes a dot product)."""

    pooling: int | None = None
    """llama.cpp pooling type (0 none, 1 mean, 2 cls, 3 last); None: the model's own, or mean."""

    verbose: bool = False
    """Print llama.cpp's load details to stderr."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further context settings (see `LlamaCpp.model_kwargs`)."""

    _loaded: _native.Engine | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_path(self) -> LlamaCppEmbeddings:
        path = os.path.expanduser(self.model_path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"model file not found: {path}")
        self.model_path = path
        return self

    def load(self) -> _native.Engine:
        """Load the model now (otherwise on first use)."""
        if not _engine.is_live(self._loaded):  # None, or inherited through fork()
            model_config = _engine.ModelConfig(
                path=self.model_path,
                n_gpu_layers=self.n_gpu_layers or 0,
                use_mmap=self.use_mmap,
                use_mlock=self.use_mlock,
            )
            engine_config = _engine.EngineConfig(
                **{
                    "n_ctx": -1 if self.n_ctx is None else self.n_ctx,
                    "n_batch": self.n_batch,
                    "n_ubatch": self.n_batch,
                    "n_threads": self.n_threads or 0,
                    "f16_kv": self.f16_kv,
                    "embeddings": True,
                    "pooling": -1 if self.pooling is None else self.pooling,
                    **self.model_kwargs,
                }
            )
            self._loaded = _engine.get_engine(model_config, engine_config, self.verbose)
        return self._loaded

    def _embed(self, texts: list[str]) -> list[list[float]]:
        engine = self.load()
        model = engine.model
        tokens = [model.tokenize(t, add_special=True, parse_special=False) for t in texts]
        try:
            vectors: list[list[float]] = engine.embed(tokens, self.normalize)
        finally:
            _engine.flush_native_logs(self.verbose)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text."""
        return self._embed(list(texts)) if texts else []

    def embed_query(self, text: str) -> list[float]:
        """The vector of one text."""
        return self._embed([text])[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await asyncio.get_running_loop().run_in_executor(None, self.embed_query, text)
