"""`LlamaCppEmbeddings`: LangChain embeddings from a local GGUF model."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, ClassVar, Literal

from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

import langchain_llamacpp._native as _native
import langchain_llamacpp._offloop as _offloop
import langchain_llamacpp._registry as _registry
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._hardware import HardwareParams
from langchain_llamacpp._lifecycle import NativeStateMixin, quiet_at_exit
from langchain_llamacpp._logs import flush_native_logs
from langchain_llamacpp._params import LocalModelChecks, PathText
from langchain_llamacpp._pretrained import FromPretrainedMixin
from langchain_llamacpp._text import valid_text
from langchain_llamacpp.native import Engine

# Task prefixes that retrieval models were trained with, by model name (GGUF `general.name`, or the
# file name): (query, document). Their model cards give them; without them retrieval is worse.
_RETRIEVAL_PREFIXES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"nomic[-_ ]embed[-_ ]text", re.I), "search_query: ", "search_document: "),
    (re.compile(r"(^|[-_ /])e5[-_ ]", re.I), "query: ", "passage: "),
    (
        re.compile(r"mxbai[-_ ]embed|bge[-_ ].*en[-_ ]v1\.5|snowflake[-_ ]arctic[-_ ]embed", re.I),
        "Represent this sentence for searching relevant passages: ",
        "",
    ),
)


def _model_prefixes(model: _native.Model) -> tuple[str, str]:
    """The (query, document) prefixes a known retrieval model expects; empty for others."""
    names = (model.name, model.metadata().get("general.basename", ""), os.path.basename(model.path))
    for pattern, query, document in _RETRIEVAL_PREFIXES:
        if any(pattern.search(name) for name in names):
            return query, document
    return "", ""


def step_groups(tokenized: Iterable[list[int]], limit: int, max_texts: int) -> Iterator[list[list[int]]]:
    """Token lists, a decode step's worth at a time (at most `limit` tokens, `max_texts` lists: the engine's
    embed_max_tokens and embed_max_texts): memory stays bounded for any count of texts, and Ctrl-C is seen
    between steps."""
    group: list[list[int]] = []
    n_tokens = 0
    for tokens in tokenized:
        if group and (n_tokens + len(tokens) > limit or len(group) == max_texts):
            yield group
            group, n_tokens = [], 0
        group.append(tokens)
        n_tokens += len(tokens)
    if group:
        yield group


class LlamaCppEmbeddings(LocalModelChecks, FromPretrainedMixin, NativeStateMixin, HardwareParams, Embeddings):
    """Embeddings with a local GGUF model through llama.cpp.

    Works with embedding models (BERT-style: nomic-embed-text, bge, e5, mxbai, ...) with their own
    pooling, and with generative models (token embeddings averaged). Many texts share each decode
    step; vectors equal those of llama.cpp's own ``llama-embedding`` on the same model. Models that
    were trained with task prefixes get them automatically (nomic: ``search_query: `` and
    ``search_document: ``); see ``query_instruction``.

    Instantiate:
        .. code-block:: python

            from langchain_llamacpp import LlamaCppEmbeddings

            embeddings = LlamaCppEmbeddings(model_path="nomic-embed-text-v1.5.f16.gguf")

    Embed:
        .. code-block:: python

            vectors = embeddings.embed_documents(["llama.cpp runs GGUF models.", "Paris is in France."])
            query = embeddings.embed_query("Which library runs GGUF files?")

    Retrieval:
        .. code-block:: python

            from langchain_core.vectorstores import InMemoryVectorStore

            texts = ["llama.cpp is written in C++.", "GGUF is its model format.", "Paris is in France."]
            store = InMemoryVectorStore.from_texts(texts, embedding=embeddings)
            docs = store.as_retriever(search_kwargs={"k": 2}).invoke("What format does llama.cpp use?")
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    # Which rows of the settings table apply (`_settings.SETTINGS`).
    _settings_class: ClassVar[str] = _settings.EMBEDDINGS

    model_path: PathText
    """Path to the GGUF model file."""

    n_ctx: int | None = Field(None, ge=0)
    """Longest text in tokens. None: the model's trained length, capped at 4096; 0: the trained length."""

    n_batch: int | None = Field(None, ge=1)
    """Tokens computed per decode step, shared by as many texts as fit. None: ``n_ctx``, so that any
    text up to the context embeds (encoders must see a whole text in one step)."""

    n_threads: int | None = Field(None, ge=1)
    """Threads. None: the machine's physical cores."""

    n_gpu_layers: int | None = None
    """Layers to offload to the GPU (-1: all). None: as many as fit in free device memory on a build with
    a GPU backend (as `LlamaCpp.n_gpu_layers`), none on a CPU-only build."""

    pooling_type: Literal["mean", "cls", "last"] | None = None
    """How token vectors become one vector per text. None: the model's own (from its GGUF metadata),
    or mean for generative models, which have none."""

    normalize: bool = True
    """L2-normalise the vectors (cosine similarity becomes a dot product), as llama.cpp's tools do."""

    truncate: bool = False
    """Cut texts longer than the context to fit (keeping the model's end-of-text token) instead of
    raising ``ValueError``."""

    query_instruction: str | None = None
    """Prefix for ``embed_query`` texts. None: the prefix the model was trained with, for the models
    that have one (nomic-embed-text: ``"search_query: "``; e5: ``"query: "``; bge-en-v1.5, mxbai and
    arctic-embed: ``"Represent this sentence for searching relevant passages: "``); ``""``: none."""

    document_instruction: str | None = None
    """Prefix for ``embed_documents`` texts. None: the model's own (nomic-embed-text:
    ``"search_document: "``; e5: ``"passage: "``); ``""``: none."""

    seed: int = -1
    """Accepted for compatibility with langchain_community (embeddings do not sample)."""

    f16_kv: bool = True
    """Keep the KV cache in 16-bit floats (generative models)."""

    use_mlock: bool = False
    """Lock the weights in RAM."""

    use_mmap: bool = True
    """Map the model file into memory."""

    n_parts: int = -1
    """Accepted for compatibility with langchain_community; GGUF files need no part count."""

    logits_all: bool = False
    """Accepted for compatibility with langchain_community; embeddings compute no logits."""

    vocab_only: bool = False
    """Accepted for compatibility with langchain_community; must stay False to embed."""

    device: str | None = None
    """Accepted for compatibility with langchain_community; use ``n_gpu_layers`` to choose the GPU."""

    pooling: int | None = Field(None, ge=1, le=3)
    """llama.cpp's pooling number (1 mean, 2 cls, 3 last); ``pooling_type`` by name is clearer."""

    verbose: bool = False
    """Print llama.cpp's load details to stderr. False: nothing is printed."""

    progress: bool | None = None
    """A progress bar on stderr while the model loads (tqdm's when installed). None: when `verbose`."""

    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further context and load settings, those without a field here (as ``LlamaCpp.model_kwargs``):
    e.g. ``flash_attn``, ``n_threads_batch``, ``lora_path``, ``kv_overrides``, ``rpc_servers``."""

    _loaded: Engine | None = PrivateAttr(default=None)
    _prefixes: tuple[str, str] = PrivateAttr(default=("", ""))

    @model_validator(mode="after")
    def _check(self) -> LlamaCppEmbeddings:
        if self.vocab_only:
            raise ValueError("vocab_only=True loads no weights, so nothing can be embedded")
        if self.pooling is not None and self.pooling_type is not None:
            raise ValueError("give pooling_type or pooling, not both")
        return self

    def load(self) -> Engine:
        """Load the model now (otherwise on first use)."""
        if not _registry.is_live(self._loaded):  # None, or inherited through fork()
            engine = _registry.get_engine(
                _settings.model_config(self), _settings.engine_config(self), self.verbose, self.progress
            )
            self._prefixes = _model_prefixes(engine.model)
            self._loaded = engine
        return self._loaded

    @property
    def query_prefix(self) -> str:
        """The prefix ``embed_query`` puts before each text (loads the model)."""
        self.load()
        return self._prefixes[0] if self.query_instruction is None else self.query_instruction

    @property
    def document_prefix(self) -> str:
        """The prefix ``embed_documents`` puts before each text (loads the model)."""
        self.load()
        return self._prefixes[1] if self.document_instruction is None else self.document_instruction

    def _tokens(self, model: _native.Model, text: str, prefix: str, index: int, limit: int) -> list[int]:
        valid_text(text, f"text {index}" if index >= 0 else "the query")
        tokens: list[int] = model.tokenize(prefix + text, add_special=True, parse_special=False)
        if len(tokens) <= limit:
            return tokens
        if not self.truncate:
            where = f"text {index}" if index >= 0 else "the query"
            raise ValueError(
                f"{where} has {len(tokens)} tokens, more than the {limit} that fit in one embedding batch "
                f"(n_ctx, or n_batch if smaller); split it into smaller chunks or pass truncate=True"
            )
        # Keep the special tokens the tokenizer adds around the text ([CLS] ... [SEP], BOS ... EOS).
        body: list[int] = model.tokenize(prefix + text, add_special=False, parse_special=False)
        extra = len(tokens) - len(body)
        head = next((i for i in range(extra + 1) if tokens[i : i + len(body)] == body), extra)
        return tokens[:head] + body[: limit - extra] + tokens[head + len(body) :]

    def _groups(self, texts: Sequence[str], prefix: str, single: bool) -> Iterator[list[list[int]]]:
        engine = self.load()
        model = engine.model
        limit = engine.embed_max_tokens
        tokenized = (self._tokens(model, text, prefix, -1 if single else i, limit) for i, text in enumerate(texts))
        return step_groups(tokenized, limit, engine.embed_max_texts)

    def _embed(self, texts: Sequence[str], prefix: str, single: bool = False) -> list[list[float]]:
        engine = self.load()
        norm = 2 if self.normalize else -1
        vectors: list[list[float]] = []
        try:
            with quiet_at_exit():
                for group in self._groups(texts, prefix, single):
                    vectors.extend(engine.embed(group, norm))
        finally:
            flush_native_logs(self.verbose)
        return vectors

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One vector per text, with the model's document prefix (see ``document_instruction``)."""
        if not texts:
            return []
        return self._embed(texts, self.document_prefix)

    def embed_query(self, text: str) -> list[float]:
        """The vector of a search query, with the model's query prefix (see ``query_instruction``)."""
        return self._embed([text], self.query_prefix, single=True)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """``embed_documents`` in a worker thread (loading the model on the first call included): the event
        loop keeps running meanwhile. Cancelled, the call raises at once and the embedding finishes unseen."""
        return await _offloop.off_loop(functools.partial(self.embed_documents, texts))

    async def aembed_query(self, text: str) -> list[float]:
        """``embed_query`` in a worker thread, as ``aembed_documents``."""
        return await _offloop.off_loop(functools.partial(self.embed_query, text))
