"""`LlamaCppReranker`: a cross-encoder reranker (LangChain document compressor) from a local GGUF model."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, Field, PrivateAttr

import langchain_llamacpp._native as _native
import langchain_llamacpp._offloop as _offloop
import langchain_llamacpp._registry as _registry
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._docs import DocumentedFields
from langchain_llamacpp._lifecycle import NativeStateMixin, quiet_at_exit
from langchain_llamacpp._logs import flush_native_logs
from langchain_llamacpp._params import LocalModelChecks, PathText
from langchain_llamacpp._pretrained import FromPretrainedMixin
from langchain_llamacpp._text import valid_text
from langchain_llamacpp.embeddings import step_groups
from langchain_llamacpp.native import Engine

# Re-tokenizations while cutting a document to fit (truncate=True): a word-piece vocabulary may give a
# cut text back in a few more tokens than it was cut to; each round removes that excess.
_MAX_CUTS = 4


class LlamaCppReranker(
    LocalModelChecks, FromPretrainedMixin, NativeStateMixin, DocumentedFields, BaseDocumentCompressor
):
    """Reranking with a local cross-encoder GGUF model through llama.cpp (bge-reranker, jina-reranker,
    Qwen3-Reranker, ...: models converted with rank pooling and a classifier head).

    Each query-document pair is scored by the model as llama-server's ``/rerank`` scores it (the pair
    built from the model's rerank template when it has one, else ``[CLS] query [SEP] document`` for BERT
    vocabularies); many pairs share each decode step. As a LangChain document compressor it keeps the
    ``top_n`` most relevant documents, best first, each with its ``relevance_score`` in its metadata.

    Instantiate:
        .. code-block:: python

            from langchain_llamacpp import LlamaCppReranker

            reranker = LlamaCppReranker(model_path="bge-reranker-v2-m3-Q8_0.gguf", top_n=3)

    Rerank:
        .. code-block:: python

            docs = ["GGUF is llama.cpp's model format.", "Paris is in France.", "llama.cpp is written in C++."]
            reranker.rerank("What format does llama.cpp use?", docs)  # [(0, 5.1), (2, -1.3), (1, -9.8)]

    Second stage of a retriever:
        .. code-block:: python

            from langchain_classic.retrievers import ContextualCompressionRetriever

            retriever = ContextualCompressionRetriever(
                base_compressor=reranker, base_retriever=store.as_retriever(search_kwargs={"k": 20})
            )
            docs = retriever.invoke("What format does llama.cpp use?")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # Which rows of the settings table apply (`_settings.SETTINGS`).
    _settings_class: ClassVar[str] = _settings.RERANKER

    model_path: PathText
    """Path to the GGUF file of a reranking model (rank pooling and a classifier head, as llama.cpp's
    converter writes bge-reranker and its kin); another model raises ``ValueError`` on first use."""

    top_n: int | None = Field(3, ge=1)
    """How many documents ``compress_documents`` keeps, the most relevant first. None: all of them."""

    n_ctx: int | None = Field(None, ge=0)
    """Longest query-document pair in tokens. None: the model's trained length, capped at 4096; 0: the
    trained length."""

    n_batch: int | None = Field(None, ge=1)
    """Tokens computed per decode step, shared by as many pairs as fit. None: ``n_ctx``, so that any pair
    up to the context is scored (encoders must see a whole pair in one step)."""

    n_threads: int | None = Field(None, ge=1)
    """Threads. None: the machine's physical cores."""

    n_gpu_layers: int | None = None
    """Layers to offload to the GPU (-1: all)."""

    truncate: bool = False
    """Cut documents so that each pair fits the context instead of raising ``ValueError`` (the query is
    never cut)."""

    use_mlock: bool = False
    """Lock the weights in RAM."""

    use_mmap: bool = True
    """Map the model file into memory."""

    verbose: bool = False
    """Print llama.cpp's load details to stderr. False: nothing is printed."""

    progress: bool | None = None
    """A progress bar on stderr while the model loads (tqdm's when installed). None: when `verbose`."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further context and load settings, those without a field here (as ``LlamaCpp.model_kwargs``):
    e.g. ``flash_attn``, ``n_threads_batch``, ``kv_overrides``, ``rpc_servers``."""

    _loaded: Engine | None = PrivateAttr(default=None)

    def load(self) -> Engine:
        """Load the model now (otherwise on first use); ``ValueError`` if it is not a reranker."""
        if not _registry.is_live(self._loaded):  # None, or inherited through fork()
            config = replace(_settings.engine_config(self), pooling=_settings.RANK_POOLING)
            self._loaded = _registry.get_engine(_settings.model_config(self), config, self.verbose, self.progress)
        return self._loaded

    def _pair(self, model: _native.Model, query: str, document: str, index: int, limit: int) -> list[int]:
        tokens: list[int] = model.rerank_tokens(query, valid_text(document, f"document {index}"))
        if len(tokens) <= limit:
            return tokens
        if not self.truncate:
            raise ValueError(
                f"the query with document {index} is {len(tokens)} tokens, more than the {limit} that fit in one "
                f"batch (n_ctx, or n_batch if smaller); split the document or pass truncate=True"
            )
        overhead = len(model.rerank_tokens(query, ""))
        body: list[int] = model.tokenize(document, add_special=False, parse_special=False)
        keep = limit - overhead
        for _ in range(_MAX_CUTS):
            if keep <= 0:
                break
            tokens = model.rerank_tokens(query, model.detokenize(body[:keep]))
            if len(tokens) <= limit:
                return tokens
            keep -= len(tokens) - limit
        raise ValueError(f"the query alone ({overhead} tokens with the pair's own) leaves no room for document {index}")

    def _groups(self, query: str, documents: Sequence[str]) -> Iterator[list[list[int]]]:
        engine = self.load()
        model = engine.model
        limit = engine.embed_max_tokens
        valid_text(query, "the query")
        pairs = (self._pair(model, query, document, i, limit) for i, document in enumerate(documents))
        return step_groups(pairs, limit, engine.embed_max_texts)

    def scores(self, query: str, documents: Sequence[str]) -> list[float]:
        """Each document's relevance to `query`, in the documents' order: the model's raw score (a logit for
        bge-reranker: higher is more relevant; not normalized)."""
        if isinstance(documents, str):
            raise TypeError("documents must be a list of strings, not one string")
        if not documents:
            return []
        engine = self.load()
        out: list[float] = []
        try:
            with quiet_at_exit():
                for group in self._groups(query, documents):
                    out.extend(engine.rerank(group))
        finally:
            flush_native_logs(self.verbose)
        return out

    def rerank(self, query: str, documents: Sequence[str]) -> list[tuple[int, float]]:
        """(index, score) of every document, the most relevant first (ties keep the documents' order)."""
        scored = list(enumerate(self.scores(query, documents)))
        scored.sort(key=lambda pair: -pair[1])
        return scored

    async def arerank(self, query: str, documents: Sequence[str]) -> list[tuple[int, float]]:
        """``rerank`` in a worker thread (loading the model on the first call included): the event loop
        keeps running meanwhile."""
        return await _offloop.off_loop(functools.partial(self.rerank, query, documents))

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The ``top_n`` documents most relevant to `query`, best first, each a copy with its score in
        ``metadata["relevance_score"]``."""
        ranked = self.rerank(query, [doc.page_content for doc in documents])
        kept = ranked if self.top_n is None else ranked[: self.top_n]
        return [_scored(documents[i], score) for i, score in kept]

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """``compress_documents`` in a worker thread, as ``arerank``."""
        return await _offloop.off_loop(functools.partial(self.compress_documents, documents, query, callbacks))


def _scored(document: Document, score: float) -> Document:
    return Document(
        page_content=document.page_content,
        metadata={**document.metadata, "relevance_score": score},
        id=document.id,
    )
