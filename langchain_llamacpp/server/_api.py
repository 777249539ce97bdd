"""`OpenAIAPI`: OpenAI's chat, completion and embedding calls (and llama-server's rerank) in-process,
answered by the package's own classes.

Each model is a `ChatLlamaCpp` and a `LlamaCpp` on one shared engine (one KV pool, one batch), and each
request runs through the classes' own entry points (`_astream`): the same options, template, grammar,
chat parser and tool-call decision as `ChatLlamaCpp.invoke`, so whatever lands in the classes lands here.
The HTTP app (`_app.py`) only parses, authenticates and streams what this returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import langchain_llamacpp._offloop as _offloop
import langchain_llamacpp.server._requests as _requests
import langchain_llamacpp.server._responses as _responses
from langchain_llamacpp._settings import DEFAULT_N_SEQ
from langchain_llamacpp.chat_models import ChatLlamaCpp
from langchain_llamacpp.embeddings import LlamaCppEmbeddings
from langchain_llamacpp.llms import LlamaCpp
from langchain_llamacpp.rerankers import LlamaCppReranker
from langchain_llamacpp.server._errors import APIError, BadRequest, NotFound, Overloaded, from_exception

_T = TypeVar("_T")
# A choice's stream: (the OpenAI choice of each chunk, or None; the usage, on the last chunk).
_Choices = AsyncIterator[tuple[dict[str, Any] | None, Any]]

DEFAULT_MAX_QUEUE = 64
_CHAT_ONLY = frozenset(ChatLlamaCpp.model_fields) - frozenset(LlamaCpp.model_fields)


class _Gate:
    """Requests of one model in flight: up to its slots plus `max_queue` waiting; past that a 503."""

    def __init__(self, name: str, slots: int, max_queue: int) -> None:
        self.name = name
        self.slots = slots
        self.limit = slots + max_queue
        self.in_flight = 0
        self._lock = threading.Lock()

    def admit(self, count: int) -> Callable[[], None]:
        """Take `count` places, or raise Overloaded; returns the release (safe to call twice)."""
        with self._lock:
            if self.in_flight + count > self.limit:
                raise Overloaded(f"model {self.name!r} has {self.in_flight} requests in flight (limit {self.limit})")
            self.in_flight += count
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if not released:
                    released = True
                    self.in_flight -= count

        return release


@dataclass
class _Model:
    """A generating model: its chat and completion classes on one engine, and its gate."""

    name: str
    chat: ChatLlamaCpp
    llm: LlamaCpp
    gate: _Gate

    def load(self) -> None:
        """Load the engine (blocking), and give it to the completion class too."""
        engine = self.chat.load()
        if self.llm._loaded is not engine:
            self.llm._loaded = engine  # one engine for both, whatever fields only the chat class has


@dataclass
class _Embedder:
    name: str
    embeddings: LlamaCppEmbeddings
    gate: _Gate


@dataclass
class _Reranker:
    name: str
    reranker: LlamaCppReranker
    gate: _Gate


# Each kind of model, and where its requests go (to say so when a request names a model of another kind).
_ENDPOINTS = {
    "chat or completion": "/v1/chat/completions or /v1/completions",
    "embedding": "/v1/embeddings",
    "reranking": "/v1/rerank",
}


@dataclass
class _Counters:
    """What /metrics reports besides the engines' own counters."""

    requests: dict[tuple[str, int], int] = field(default_factory=dict)  # (endpoint, status) -> count
    tokens: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, prompt|completion) -> count
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_request(self, endpoint: str, status: int) -> None:
        with self.lock:
            self.requests[endpoint, status] = self.requests.get((endpoint, status), 0) + 1

    def add_usage(self, model: str, usage: Mapping[str, Any] | None) -> None:
        if usage is None:
            return
        with self.lock:
            for kind in ("prompt", "completion"):
                if f"{kind}_tokens" in usage:
                    key = (model, kind)
                    self.tokens[key] = self.tokens.get(key, 0) + int(usage[f"{kind}_tokens"])


class OpenAIAPI:
    """OpenAI's chat completions, completions and embeddings on local GGUF models, in-process.

    `models` maps a model id to the fields of `ChatLlamaCpp` for it (`model_path` and any other field:
    `n_ctx`, `n_seq`, `temperature`, `chat_template`, `mmproj_path`, ...); the first is the default for
    requests that name none. `embedding_models` maps ids to the fields of `LlamaCppEmbeddings`,
    `reranker_models` to those of `LlamaCppReranker` (llama-server's `/v1/rerank`).

    `create_chat_completion(messages=..., tools=..., stream=...)` and the others take OpenAI's request
    fields and return OpenAI's response dicts, or with `stream=True` an iterator of chunk dicts; the `a`
    versions are their asyncio counterparts. Errors are `APIError`s (`BadRequest` naming the field,
    `NotFound` for an unknown model, `Overloaded` when a model's queue is full), as the server sends them.
    """

    def __init__(
        self,
        models: Mapping[str, Mapping[str, Any]] | None = None,
        embedding_models: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        reranker_models: Mapping[str, Mapping[str, Any]] | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
    ) -> None:
        if not models and not embedding_models and not reranker_models:
            raise ValueError("give at least one model (models=, embedding_models= or reranker_models=)")
        self._models = {name: self._model(name, dict(fields), max_queue) for name, fields in (models or {}).items()}
        self._embedders = {
            name: _Embedder(name, LlamaCppEmbeddings(**fields), _Gate(name, 1, max_queue))
            for name, fields in (embedding_models or {}).items()
        }
        self._rerankers = {
            name: _Reranker(name, LlamaCppReranker(**fields), _Gate(name, 1, max_queue))
            for name, fields in (reranker_models or {}).items()
        }
        names = [*self._models, *self._embedders, *self._rerankers]
        if len(set(names)) < len(names):
            raise ValueError(f"model ids used twice: {sorted({n for n in names if names.count(n) > 1})}")
        self._kinds: dict[str, Mapping[str, Any]] = {
            "chat or completion": self._models,
            "embedding": self._embedders,
            "reranking": self._rerankers,
        }
        self.created = int(time.time())
        self.counters = _Counters()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()

    @staticmethod
    def _model(name: str, fields: dict[str, Any], max_queue: int) -> _Model:
        chat = ChatLlamaCpp(**fields)
        llm = LlamaCpp(**{k: v for k, v in fields.items() if k not in _CHAT_ONLY})
        slots = 1 if chat.batch_invariant and chat.n_seq is None else chat.n_seq or DEFAULT_N_SEQ
        return _Model(name, chat, llm, _Gate(name, slots, max_queue))

    # -- models --------------------------------------------------------------------------------------

    def load(self) -> None:
        """Load every model now (otherwise each loads on its first request)."""
        for model in self._models.values():
            model.load()
        for embedder in self._embedders.values():
            embedder.embeddings.load()
        for reranker in self._rerankers.values():
            reranker.reranker.load()

    def list_models(self) -> dict[str, Any]:
        """`GET /v1/models`."""
        names = [name for table in self._kinds.values() for name in table]
        return {"object": "list", "data": [self.retrieve_model(name) for name in names]}

    def retrieve_model(self, name: str) -> dict[str, Any]:
        """`GET /v1/models/{name}`."""
        if not any(name in table for table in self._kinds.values()):
            raise NotFound(f"the model {name!r} does not exist", param="model", code="model_not_found")
        return {"id": name, "object": "model", "created": self.created, "owned_by": "langchain-llamacpp"}

    def _served(self, kind: str, name: str | None) -> Any:
        """The model of `kind` a request names (its first one where it names none): a 404 for an unknown
        id, a 400 for a model of another kind."""
        table = self._kinds[kind]
        if name is None:
            if not table:
                raise BadRequest(f"this server has no {kind} model", param="model")
            return next(iter(table.values()))
        if name in table:
            return table[name]
        for other, models in self._kinds.items():
            if name in models:
                raise BadRequest(f"{name!r} is a {other} model: use {_ENDPOINTS[other]}", param="model")
        raise NotFound(f"the model {name!r} does not exist", param="model", code="model_not_found")

    def _generating(self, name: str | None) -> _Model:
        model: _Model = self._served("chat or completion", name)
        return model

    # -- chat ----------------------------------------------------------------------------------------

    async def acreate_chat_completion(
        self, body: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """`POST /v1/chat/completions` (the request as `body`, or as keyword arguments)."""
        request = _requests.chat_request(body if body is not None else fields)
        model = self._generating(request.model)

        def choice(index: int) -> _Choices:
            return _chat_choices(model.chat, request, index)

        return await self._run("chat", model, request, choice, _responses.ChatFold)

    def create_chat_completion(
        self, body: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """`acreate_chat_completion`, blocking (the requests run on this object's own event loop thread)."""
        return self._blocking(self.acreate_chat_completion(body, **fields))

    # -- completions ---------------------------------------------------------------------------------

    async def acreate_completion(
        self, body: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """`POST /v1/completions`: each prompt times `n` choices, in that order."""
        request = _requests.completion_request(body if body is not None else fields)
        model = self._generating(request.model)
        if model.llm._loaded is not model.chat._loaded:
            await _offloop.off_loop(model.load)

        def choice(index: int) -> _Choices:
            prompt = request.prompts[index // request.n]
            return _completion_choices(model.llm, request, prompt, index)

        return await self._run("text", model, request, choice, _responses.CompletionFold)

    def create_completion(
        self, body: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """`acreate_completion`, blocking."""
        return self._blocking(self.acreate_completion(body, **fields))

    # -- both ----------------------------------------------------------------------------------------

    async def _run(
        self,
        kind: str,
        model: _Model,
        request: _requests.Generation,
        choice: Callable[[int], _Choices],
        fold: Callable[[int], Any],
    ) -> dict[str, Any] | AsyncIterator[dict[str, Any]]:
        """Every choice started (its first chunk read, so that what the engine refuses is raised before
        anything is sent), then streamed, or added up into one response."""
        count = request.n * len(getattr(request, "prompts", [None]))
        release = model.gate.admit(count)
        envelope = _responses.Envelope(kind, model.name)
        streams = [choice(i) for i in range(count)]
        try:
            firsts = await asyncio.gather(*(s.__anext__() for s in streams), return_exceptions=True)
        except BaseException:  # cancelled (a client gone): gather has cancelled every start
            await _close_all(streams)
            release()
            raise
        error = next((r for r in firsts if isinstance(r, BaseException)), None)
        if error is not None:
            await _close_all(streams)
            release()
            raise from_exception(error) from error
        merged = _merge(streams, firsts)
        if request.stream:
            return self._stream(model.name, envelope, merged, request.include_usage, streams, release)
        try:
            return await self._whole(kind, model.name, envelope, merged, [fold(i) for i in range(count)])
        finally:
            await merged.aclose()  # type: ignore[attr-defined]  # an async generator
            await _close_all(streams)
            release()

    async def _stream(
        self,
        model: str,
        envelope: _responses.Envelope,
        merged: AsyncIterator[tuple[int, Any]],
        include_usage: bool,
        streams: list[_Choices],
        release: Callable[[], None],
    ) -> AsyncIterator[dict[str, Any]]:
        usage: dict[str, Any] | None = None
        try:
            async for _, (choice, choice_usage) in merged:
                usage = _responses.add_usage(usage, choice_usage)
                if choice is not None:
                    # Without include_usage, each choice's last chunk carries its usage, as llama-server's
                    # does (clients that add chunks up, ChatOpenAI's, get the total); with it, one chunk at the end.
                    yield envelope.chunk([choice], None if include_usage else choice_usage)
            self.counters.add_usage(model, usage)
            if include_usage and usage is not None:
                yield envelope.chunk([], usage)
        except Exception as e:
            raise from_exception(e) from e
        finally:
            await merged.aclose()  # type: ignore[attr-defined]  # an async generator
            await _close_all(streams)  # a client gone: each request cancelled, its slot freed at the next step
            release()

    async def _whole(
        self,
        kind: str,
        model: str,
        envelope: _responses.Envelope,
        merged: AsyncIterator[tuple[int, Any]],
        folds: list[Any],
    ) -> dict[str, Any]:
        usage: dict[str, Any] | None = None
        try:
            async for index, (choice, choice_usage) in merged:
                usage = _responses.add_usage(usage, choice_usage)
                if choice is not None:
                    folds[index].add(choice)
        except Exception as e:
            raise from_exception(e) from e
        self.counters.add_usage(model, usage)
        response = envelope.chunk([f.choice() for f in folds], usage)
        response["object"] = "chat.completion" if kind == "chat" else "text_completion"
        return response

    # -- embeddings ----------------------------------------------------------------------------------

    async def acreate_embedding(self, body: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """`POST /v1/embeddings`: the texts as given (a retrieval model's task prefix, if it wants one, is
        the client's to write: nomic-embed-text's `search_document: `)."""
        request = _requests.embedding_request(body if body is not None else fields)
        embedder: _Embedder = self._served("embedding", request.model)
        release = embedder.gate.admit(1)
        try:
            vectors, tokens = await _offloop.off_loop(functools.partial(_embed, embedder.embeddings, request))
        except Exception as e:
            raise from_exception(e) from e
        finally:
            release()
        self.counters.add_usage(embedder.name, {"prompt_tokens": tokens})
        return {
            "object": "list",
            "data": _responses.embedding_data(vectors, request.base64),
            "model": embedder.name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    def create_embedding(self, body: Mapping[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        """`acreate_embedding`, blocking."""
        result = self._blocking(self.acreate_embedding(body, **fields))
        assert isinstance(result, dict)
        return result

    # -- reranking ------------------------------------------------------------------------------------

    async def acreate_rerank(self, body: Mapping[str, Any] | None = None, **fields: Any) -> Any:
        """`POST /v1/rerank` (llama-server's): each document's relevance to the query, the most relevant
        first, `top_n` of them. Jina's shape (`documents` -> `results` of index and `relevance_score`, with
        `document` where `return_documents`), or TEI's (`texts` -> a list of index and `score`, with `text`
        where `return_text`), as llama-server answers each."""
        request = _requests.rerank_request(body if body is not None else fields)
        reranker: _Reranker = self._served("reranking", request.model)
        release = reranker.gate.admit(1)
        try:
            call = functools.partial(reranker.reranker._scores_and_tokens, request.query, request.documents)
            scores, tokens = await _offloop.off_loop(call)
        except Exception as e:
            raise from_exception(e) from e
        finally:
            release()
        self.counters.add_usage(reranker.name, {"prompt_tokens": tokens})
        return _responses.rerank_response(request, reranker.name, scores, tokens)

    def create_rerank(self, body: Mapping[str, Any] | None = None, **fields: Any) -> Any:
        """`acreate_rerank`, blocking."""
        return self._run_on_loop(self.acreate_rerank(body, **fields))

    # -- the blocking API on a private event loop ------------------------------------------------------

    def _run_on_loop(self, coroutine: Awaitable[_T]) -> _T:
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="openai-api", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(_awaited(coroutine), self._loop).result()

    def _blocking(self, coroutine: Awaitable[Any]) -> dict[str, Any] | Iterator[dict[str, Any]]:
        result = self._run_on_loop(coroutine)
        if isinstance(result, dict):
            return result
        assert isinstance(result, AsyncIterator)
        return self._iterate(result)

    def _iterate(self, stream: AsyncIterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        try:
            while True:
                try:
                    yield self._run_on_loop(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                self._run_on_loop(aclose())

    # -- metrics -------------------------------------------------------------------------------------

    def metrics(self) -> str:
        """The Prometheus text of `GET /metrics`: requests, tokens, each model's queue and slots, and its
        engine's counters."""
        lines = _Metrics()
        with self.counters.lock:
            for (endpoint, status), count in sorted(self.counters.requests.items()):
                lines.add(
                    "requests_total", "counter", "HTTP requests answered", count, endpoint=endpoint, status=status
                )
            for (model, kind), count in sorted(self.counters.tokens.items()):
                lines.add(f"{kind}_tokens_total", "counter", f"{kind.capitalize()} tokens", count, model=model)
        for kind, table in self._kinds.items():
            for entry in table.values():
                engine = entry.chat._loaded if kind == "chat or completion" else None
                _gate_metrics(lines, entry.gate, engine.stats() if engine is not None else None)
        return lines.text()


# The engine's figures of now (the others count since it started; max_*: the largest so far).
_ENGINE_NOW = ("slots_busy", "queue_length")


def _gate_metrics(lines: _Metrics, gate: _Gate, stats: Any) -> None:
    """A model's requests, slots and queue: from its engine where it has one loaded (the engine's own
    queue and slots), else from the server's admission counts; and the engine's counters."""
    waiting = max(gate.in_flight - gate.slots, 0)
    busy, queued = (gate.in_flight - waiting, waiting) if stats is None else (stats.slots_busy, stats.queue_length)
    name = gate.name
    lines.add("requests_in_flight", "gauge", "Requests admitted and not yet answered", gate.in_flight, model=name)
    lines.add("queue_length", "gauge", "Requests waiting for a slot", queued, model=name)
    lines.add("slots_busy", "gauge", "Slots with a request", busy, model=name)
    lines.add("slots_total", "gauge", "Sequence slots", gate.slots, model=name)
    for key in stats.FIELDS if stats is not None else ():
        if key not in _ENGINE_NOW:
            kind = "gauge" if key.startswith("max_") else "counter"  # max_batch: the largest so far
            lines.add(f"engine_{key}", kind, f"The engine's {key} since it started", getattr(stats, key), model=name)


class _Metrics:
    """Prometheus text: each family's HELP and TYPE once, before its samples."""

    def __init__(self) -> None:
        self._families: dict[str, list[str]] = {}

    def add(self, name: str, kind: str, help_text: str, value: float, **labels: Any) -> None:
        full = f"llamacpp_{name}"
        family = self._families.setdefault(full, [f"# HELP {full} {help_text}", f"# TYPE {full} {kind}"])
        label_text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        family.append(f"{full}{{{label_text}}} {value}")

    def text(self) -> str:
        return "".join(line + "\n" for family in self._families.values() for line in family)


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def _awaited(awaitable: Awaitable[_T]) -> _T:
    return await awaitable


# -- one choice's stream, in OpenAI's shapes -----------------------------------------------------------


async def _chat_choices(chat: ChatLlamaCpp, request: _requests.ChatRequest, index: int) -> _Choices:
    first = True
    stream = chat._astream(request.messages, stop=request.stop, **request.choice_options(index))
    try:
        async for chunk in stream:
            choice, usage = _responses.chat_choice(chunk, index, first)
            first = first and choice is None
            yield choice, usage
    finally:
        await stream.aclose()  # type: ignore[attr-defined]  # an async generator


async def _completion_choices(llm: LlamaCpp, request: _requests.CompletionRequest, prompt: str, index: int) -> _Choices:
    offset = 0
    stream = llm._astream(prompt, stop=request.stop, **request.choice_options(index))
    try:
        async for chunk in stream:
            choice, usage = _responses.completion_choice(chunk, index, offset)
            offset += len(chunk.text)
            yield choice, usage
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def _merge(streams: list[_Choices], firsts: list[Any]) -> AsyncIterator[tuple[int, Any]]:
    """The items of several streams as they come, each with its stream's index (the firsts already read)."""
    for first_index, first in enumerate(firsts):
        yield first_index, first
    if len(streams) == 1:
        async for item in streams[0]:
            yield 0, item
        return
    queue: asyncio.Queue[tuple[int, Any] | BaseException | None] = asyncio.Queue()

    async def pump(index: int, stream: _Choices) -> None:
        try:
            async for item in stream:
                await queue.put((index, item))
            await queue.put(None)
        except Exception as e:
            await queue.put(e)

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(tasks)
        while left:
            got = await queue.get()
            if got is None:
                left -= 1
            elif isinstance(got, BaseException):
                raise got
            else:
                yield got
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _close_all(streams: list[_Choices]) -> None:
    for stream in streams:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]


def _embed(embeddings: LlamaCppEmbeddings, request: _requests.EmbeddingRequest) -> tuple[list[list[float]], int]:
    """The vectors of the texts as given, and their token count (blocking: in a worker thread)."""
    engine = embeddings.load()
    if request.dimensions is not None and request.dimensions != engine.n_embd:
        raise BadRequest(f"dimensions must be the model's {engine.n_embd} (or left out)", param="dimensions")
    vectors = embeddings._embed(request.texts, "")
    model = engine.model
    tokens = sum(len(model.tokenize(t, add_special=True, parse_special=False)) for t in request.texts)
    return vectors, tokens


__all__ = ["APIError", "OpenAIAPI"]
