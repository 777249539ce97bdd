"""The classes' chunks in OpenAI's shapes: a chat chunk per `ChatGenerationChunk`, a completion chunk per
`GenerationChunk`, and the whole response that a stream of them adds up to (as a client adds them up).

A reply is read once, by the classes' own streaming core (`ChatStream`: the template's parser, the tool-call
decision of `_tool_calls`); this module only renames what it finds.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Mapping
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk

import langchain_llamacpp.server._requests as _requests

_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter"})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def finish_reason(value: Any) -> str:
    """OpenAI's finish reason for the engine's (a cancelled or ended request reads as "stop")."""
    return value if value in _FINISH_REASONS else "stop"


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def add_usage(total: dict[str, Any] | None, usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The sum of two usages (of the choices of one request)."""
    if usage is None:
        return total
    if total is None:
        return {**usage, "prompt_tokens_details": dict(usage["prompt_tokens_details"])}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        total[key] += usage[key]
    total["prompt_tokens_details"]["cached_tokens"] += usage["prompt_tokens_details"]["cached_tokens"]
    return total


class Envelope:
    """The id, time and model that every chunk of one response carries."""

    def __init__(self, kind: str, model: str) -> None:
        chat = kind == "chat"
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.created = int(time.time())
        self.model = model

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if usage is not None:
            out["usage"] = usage
        return out


# -- chat ----------------------------------------------------------------------------------------------


def chat_choice(chunk: ChatGenerationChunk, index: int, first: bool) -> tuple[dict[str, Any] | None, Any]:
    """The streamed choice for one chunk of choice `index` (None if it carries nothing), and its usage
    (OpenAI's, on the last chunk; None on others)."""
    message = chunk.message
    assert isinstance(message, AIMessageChunk)
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if message.content:
        delta["content"] = message.content
    reasoning = message.additional_kwargs.get("reasoning_content")
    if reasoning:
        delta["reasoning_content"] = reasoning
    if message.tool_call_chunks:
        delta["tool_calls"] = [_tool_call_delta(c) for c in message.tool_call_chunks]
    metadata = message.response_metadata
    last = message.chunk_position == "last"
    choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
    if "logprobs" in metadata:
        choice["logprobs"] = chat_logprobs(metadata["logprobs"])
    if last:
        choice["finish_reason"] = finish_reason(metadata.get("finish_reason"))
    usage = None
    if last and message.usage_metadata is not None:
        u = message.usage_metadata
        cached = (u.get("input_token_details") or {}).get("cache_read") or 0
        usage = _usage(u["input_tokens"], u["output_tokens"], cached)
    if not (delta or last or choice["logprobs"]):
        return None, usage
    return choice, usage


def _tool_call_delta(chunk: Mapping[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {"index": chunk["index"]}
    function: dict[str, Any] = {"arguments": chunk.get("args") or ""}
    if chunk.get("id"):
        delta["id"], delta["type"] = chunk["id"], "function"
    if chunk.get("name"):
        function["name"] = chunk["name"]
    delta["function"] = function
    return delta


def chat_logprobs(logprobs: Mapping[str, Any]) -> dict[str, Any]:
    """`_results.chat_logprobs` with OpenAI's `bytes` beside each token."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8", "replace"))}

    return {
        "content": [
            {
                **entry(c["token"], c["logprob"]),
                "top_logprobs": [entry(t["token"], t["logprob"]) for t in c["top_logprobs"]],
            }
            for c in logprobs["content"]
        ]
    }


class ChatFold:
    """Streamed chat choices added up into a `chat.completion` choice, as a client adds them up."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.content = ""
        self.reasoning = ""
        self.calls: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = None
        self.finish = "stop"

    def add(self, choice: Mapping[str, Any]) -> None:
        delta = choice["delta"]
        self.content += delta.get("content") or ""
        self.reasoning += delta.get("reasoning_content") or ""
        for call in delta.get("tool_calls") or ():
            if call["index"] >= len(self.calls):
                self.calls.append({"id": call.get("id"), "type": "function", "function": {"name": "", "arguments": ""}})
            function = self.calls[call["index"]]["function"]
            function["name"] += call["function"].get("name") or ""
            function["arguments"] += call["function"].get("arguments") or ""
        if choice.get("logprobs"):
            self.logprobs = (self.logprobs or []) + choice["logprobs"]["content"]
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def choice(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content or (None if self.calls else "")}
        if self.reasoning:
            message["reasoning_content"] = self.reasoning
        if self.calls:
            message["tool_calls"] = self.calls
        logprobs = {"content": self.logprobs} if self.logprobs is not None else None
        return {"index": self.index, "message": message, "logprobs": logprobs, "finish_reason": self.finish}


# -- completions ---------------------------------------------------------------------------------------


def completion_choice(chunk: GenerationChunk, index: int, offset: int) -> tuple[dict[str, Any], Any]:
    """The streamed choice for one chunk (`offset`: characters of the choice's text before it), and its usage."""
    info = chunk.generation_info or {}
    logprobs = info.get("logprobs")
    choice: dict[str, Any] = {"index": index, "text": chunk.text, "logprobs": None, "finish_reason": None}
    if logprobs is not None:
        choice["logprobs"] = _completion_logprobs(logprobs, offset)
    usage = info.get("usage")
    if usage is not None:  # the last chunk
        choice["finish_reason"] = finish_reason(info.get("finish_reason"))
        usage = _usage(usage["prompt_tokens"], usage["completion_tokens"], usage["cached_tokens"])
    return choice, usage


def _completion_logprobs(logprobs: Mapping[str, Any], offset: int) -> dict[str, Any]:
    offsets = []
    for token in logprobs["tokens"]:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": logprobs["tokens"],
        "token_logprobs": logprobs["token_logprobs"],
        "top_logprobs": logprobs["top_logprobs"],
        "text_offset": offsets,
    }


class CompletionFold:
    """Streamed completion choices added up into one choice."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text = ""
        self.logprobs: dict[str, list[Any]] | None = None
        self.finish = "stop"

    def add(self, choice: Mapping[str, Any]) -> None:
        self.text += choice["text"]
        if choice.get("logprobs"):
            if self.logprobs is None:
                self.logprobs = {key: [] for key in choice["logprobs"]}
            for key, values in choice["logprobs"].items():
                self.logprobs[key] += values
        if choice.get("finish_reason"):
            self.finish = choice["finish_reason"]

    def choice(self) -> dict[str, Any]:
        return {"index": self.index, "text": self.text, "logprobs": self.logprobs, "finish_reason": self.finish}


# -- embeddings ----------------------------------------------------------------------------------------


def embedding_data(vectors: list[list[float]], base64_encoded: bool) -> list[dict[str, Any]]:
    """OpenAI's embedding list; base64 is the little-endian float32 bytes, as OpenAI sends them."""
    return [
        {
            "object": "embedding",
            "index": i,
            "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if base64_encoded else v,
        }
        for i, v in enumerate(vectors)
    ]


def rerank_response(request: _requests.RerankRequest, model: str, scores: list[float], tokens: int) -> Any:
    """llama-server's rerank answer (format_response_rerank): the `top_n` best, best first (ties in the
    documents' order); TEI's shape is the bare list."""
    ranked = sorted(enumerate(scores), key=lambda pair: -pair[1])[: request.top_n]
    if request.tei:
        return [
            {"index": i, "score": score, **({"text": request.documents[i]} if request.return_text else {})}
            for i, score in ranked
        ]
    results = [
        {
            "index": i,
            "relevance_score": score,
            **({"document": {"text": request.documents[i]}} if request.return_text else {}),
        }
        for i, score in ranked
    ]
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return {"model": model, "object": "list", "usage": usage, "results": results}
