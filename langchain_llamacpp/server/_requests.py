"""OpenAI request bodies read into the arguments of the classes' own entry points: a pure step, tested
without a model. Each check raises `BadRequest` naming the field; values the classes' fields would refuse
are refused by the same validators (`_request.check_option`).

Fields OpenAI defines that change nothing here (`user`, `store`, `metadata`, `service_tier`, ...) and
fields unknown to it are ignored, as llama-server ignores them. llama.cpp's own sampling settings are
accepted beside OpenAI's (`top_k`, `min_p`, `repeat_penalty`, `grammar`, ...), as llama-server accepts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import BaseMessage, convert_to_messages

import langchain_llamacpp._request as _request
from langchain_llamacpp.server._errors import BadRequest

MAX_CHOICES = 16  # `n`: choices per request, each a request of its own to the engine
MAX_STOPS = 16
MAX_TOP_LOGPROBS = 20  # OpenAI's limit
MAX_RERANK_DOCUMENTS = 1000  # Cohere's and Jina's limit per request

# OpenAI's sampling fields and llama.cpp's (llama-server's names where they differ) -> the call option.
_SAMPLING = {
    "temperature": "temperature",
    "top_p": "top_p",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "logit_bias": "logit_bias",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "last_n_tokens_size",
    "mirostat": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
    "ignore_eos": "ignore_eos",
    "grammar": "grammar",
    **{name: name for name in ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n")},
    **{name: name for name in ("dry_sequence_breakers", "xtc_probability", "xtc_threshold", "top_n_sigma")},
}
_BOOLEAN_OPTIONS = frozenset({"ignore_eos", "echo"})
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_PART_TYPES = frozenset({"text", "image_url", "input_audio"})


@dataclass
class Generation:
    """What a chat or completion request asks, as the classes' `_stream` / `_astream` take it."""

    model: str | None
    stream: bool
    include_usage: bool
    n: int
    stop: list[str] | None
    options: dict[str, Any] = field(default_factory=dict)  # call options and chat options

    def choice_options(self, index: int) -> dict[str, Any]:
        """The options of choice `index`: with a seed, each choice samples with its own (seed + index)."""
        seed = self.options.get("seed")
        if index and isinstance(seed, int) and seed >= 0:
            return {**self.options, "seed": seed + index}
        return self.options


@dataclass
class ChatRequest(Generation):
    messages: list[BaseMessage] = field(default_factory=list)


@dataclass
class CompletionRequest(Generation):
    prompts: list[str] = field(default_factory=list)


@dataclass
class EmbeddingRequest:
    model: str | None
    texts: list[str]
    base64: bool
    dimensions: int | None


@dataclass
class RerankRequest:
    """A `/v1/rerank` body, as llama-server reads it: Jina's shape (`documents`, results with
    `relevance_score`), or TEI's (`texts`, a bare list with `score`, and `text` with `return_text`)."""

    model: str | None
    query: str
    documents: list[str]
    top_n: int
    tei: bool
    return_text: bool


def _get(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> Any:
    """`body[name]` if it is one of `kinds` (None if absent or null); bool is not taken for a number."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) and bool not in kinds:
        raise BadRequest(f"{name} must be {what}, not a boolean", param=name)
    if not isinstance(value, kinds):
        raise BadRequest(f"{name} must be {what}, not {type(value).__name__}", param=name)
    return value


def _texts(body: Mapping[str, Any], name: str, *, one: bool) -> list[str]:
    """`body[name]`: a non-empty list of strings, or with `one` also a single string (a list of it)."""
    value = body.get(name)
    if one and isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        what = "a string or a non-empty list of strings (not token ids)" if one else "a non-empty list of strings"
        raise BadRequest(f"{name} must be {what}", param=name)
    return value


def _option(name: str, option: str, value: Any) -> Any:
    if isinstance(value, bool) and option not in _BOOLEAN_OPTIONS:  # pydantic would take True for 1.0
        raise BadRequest(f"{name} must be a number, not a boolean", param=name)
    try:
        return _request.check_option(option, value)
    except ValueError as e:
        raise BadRequest(str(e).replace(f"invalid {option}=", f"invalid {name}=", 1), param=name) from None


def _body(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest("the request body must be a JSON object")
    return body


def _generation(body: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that chat and completions share (all but the prompt and logprobs)."""
    model = _get(body, "model", (str,), "a string")
    n = _get(body, "n", (int,), "an integer")
    n = 1 if n is None else n
    if not 1 <= n <= MAX_CHOICES:
        raise BadRequest(f"n must be between 1 and {MAX_CHOICES}, not {n}", param="n")
    stream = bool(_get(body, "stream", (bool,), "a boolean"))
    stream_options = _get(body, "stream_options", (dict,), "an object") or {}
    if stream_options and not stream:
        raise BadRequest("stream_options is only allowed with stream: true", param="stream_options")
    stop = _get(body, "stop", (str, list), "a string or a list of strings")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop)):
        raise BadRequest(f"stop must be at most {MAX_STOPS} non-empty strings", param="stop")
    options = {option: _option(name, option, body[name]) for name, option in _SAMPLING.items() if name in body}
    seed = options.get("seed")
    if seed is not None and not -1 <= seed < 2**63:
        raise BadRequest("seed must be -1 (random) or a 63-bit non-negative integer", param="seed")
    for name in ("max_completion_tokens", "max_tokens"):
        value = _get(body, name, (int,), "an integer")
        if value is not None:
            if not 1 <= value < 2**31:
                raise BadRequest(f"{name} must be between 1 and 2**31 - 1, not {value}", param=name)
            options["max_tokens"] = value
            break
    return {
        "model": model,
        "stream": stream,
        "include_usage": bool(_get(stream_options, "include_usage", (bool,), "a boolean")),
        "n": n,
        "stop": stop,
        "options": options,
    }


# -- chat ----------------------------------------------------------------------------------------------


def chat_request(body: Any) -> ChatRequest:
    """A `/v1/chat/completions` body read into `ChatLlamaCpp._astream`'s arguments."""
    body = _body(body)
    request = ChatRequest(**_generation(body), messages=_messages(body.get("messages")))
    options = request.options
    options.update(_tools(body))
    schema = _response_format(body.get("response_format"))
    if schema is not None:
        options["json_schema"] = schema
    logprobs = _get(body, "logprobs", (bool,), "a boolean")
    top = _get(body, "top_logprobs", (int,), "an integer")
    if top is not None and not (logprobs and 0 <= top <= MAX_TOP_LOGPROBS):
        raise BadRequest(f"top_logprobs must be 0-{MAX_TOP_LOGPROBS}, with logprobs: true", param="top_logprobs")
    if logprobs:
        options["logprobs"] = top or 0
    reasoning = _get(body, "reasoning_format", (str,), "a string")
    if reasoning is not None:
        if reasoning not in ("none", "auto", "deepseek"):
            raise BadRequest("reasoning_format must be 'none', 'auto' or 'deepseek'", param="reasoning_format")
        options["reasoning"] = None if reasoning == "none" else True
    budget = _reasoning_budget(body)
    if budget is not None:
        options["reasoning_budget"] = budget
    return request


def _reasoning_budget(body: Mapping[str, Any]) -> int | None:
    """llama-server's `reasoning_budget_tokens` (or `thinking_budget_tokens`): tokens of thinking at most;
    -1 or absent: the model's own setting (the server's `--reasoning-budget`)."""
    for name in ("reasoning_budget_tokens", "thinking_budget_tokens"):
        value = _get(body, name, (int,), "an integer")
        if value is not None:
            if not -1 <= value < 2**31:
                raise BadRequest(f"{name} must be -1 (the server's default) or 0 or more, not {value}", param=name)
            return None if value == -1 else value
    return None


def _messages(messages: Any) -> list[BaseMessage]:
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list of messages", param="messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        if not isinstance(message.get("role"), str) or message["role"] not in _ROLES:
            raise BadRequest(f"{where}.role must be one of {sorted(_ROLES)}", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, list):
            for j, part in enumerate(content):
                _check_part(part, f"{where}.content[{j}]")
        elif content is not None and not isinstance(content, str):
            raise BadRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
        _check_tool_calls(message.get("tool_calls"), f"{where}.tool_calls")
    try:
        return convert_to_messages([{**m, "content": m.get("content") or ""} for m in messages])
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # LangChain's reading of what is left
        raise BadRequest(f"messages: {str(e).splitlines()[0]}", param="messages") from None


def _check_tool_calls(calls: Any, where: str) -> None:
    """An assistant message's calls: OpenAI's `{"id", "type": "function", "function": {"name", "arguments"}}`."""
    if calls is None:
        return
    if not isinstance(calls, list):
        raise BadRequest(f"{where} must be a list of tool calls", param=where)
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not (
            isinstance(function, dict)
            and isinstance(function.get("name"), str)
            and isinstance(function.get("arguments"), str)
        ):
            shape = "{'type': 'function', 'function': {'name': a string, 'arguments': a JSON string}}"
            raise BadRequest(f"{where}[{i}] must be {shape}", param=f"{where}[{i}]")


def _check_part(part: Any, where: str) -> None:
    """A content part: text, or media given inline. A server reads no file and fetches no URL a client names."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str) or part["type"] not in _PART_TYPES:
        raise BadRequest(f"{where} must be a part of type {sorted(_PART_TYPES)}", param=where)
    if part["type"] == "image_url":
        ref = part.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url.startswith("data:"):
            raise BadRequest(f"{where}: images must be given inline, as a data: URL", param=where)


def _tools(body: Mapping[str, Any]) -> dict[str, Any]:
    tools = _get(body, "tools", (list,), "a list of tools")
    if not tools:
        if body.get("tool_choice") not in (None, "none", "auto"):
            raise BadRequest("tool_choice needs tools", param="tool_choice")
        return {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not (isinstance(tool, dict) and tool.get("type") == "function" and isinstance(function, dict)):
            raise BadRequest(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param=f"tools[{i}]")
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise BadRequest(f"tools[{i}].function.name must be a string", param=f"tools[{i}].function.name")
        parameters = function.get("parameters")
        if parameters is not None and not (
            isinstance(parameters, dict) and parameters.get("type", "object") == "object"
        ):
            where = f"tools[{i}].function.parameters"
            raise BadRequest(f"{where} must be a JSON schema of type object", param=where)
    options: dict[str, Any] = {"tools": [_tool(t["function"]) for t in tools]}
    choice = body.get("tool_choice")
    if choice is not None:
        if not (choice in ("auto", "none", "required") or isinstance(choice, dict)):
            raise BadRequest("tool_choice must be 'auto', 'none', 'required' or a named function", param="tool_choice")
        options["tool_choice"] = choice
    parallel = _get(body, "parallel_tool_calls", (bool,), "a boolean")
    if parallel is not None:
        options["parallel_tool_calls"] = parallel
    return options


def _tool(function: dict[str, Any]) -> dict[str, Any]:
    kept = {k: function[k] for k in ("name", "description", "parameters") if k in function}
    kept.setdefault("parameters", {"type": "object", "properties": {}})
    return {"type": "function", "function": kept}


def _response_format(value: Any) -> dict[str, Any] | None:
    """The JSON schema the reply must match (a grammar enforces it); None for plain text."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON schema", param="response_format")
        return schema
    raise BadRequest("response_format.type must be 'text', 'json_object' or 'json_schema'", param="response_format")


# -- completions and embeddings -------------------------------------------------------------------------


def completion_request(body: Any) -> CompletionRequest:
    """A `/v1/completions` body read into `LlamaCpp._astream`'s arguments."""
    body = _body(body)
    prompts = _texts(body, "prompt", one=True)
    if len(prompts) > MAX_CHOICES:
        raise BadRequest(f"at most {MAX_CHOICES} prompts per request", param="prompt")
    request = CompletionRequest(**_generation(body), prompts=prompts)
    if len(prompts) * request.n > MAX_CHOICES:
        raise BadRequest(f"prompts times n must be at most {MAX_CHOICES}", param="n")
    best_of = _get(body, "best_of", (int,), "an integer")
    if best_of is not None and best_of != request.n:
        raise BadRequest("best_of is not supported (only best_of equal to n)", param="best_of")
    logprobs = _get(body, "logprobs", (int,), "an integer")
    if logprobs is not None:
        if not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"logprobs must be 0-{MAX_TOP_LOGPROBS}", param="logprobs")
        request.options["logprobs"] = logprobs
    for name, kind, what in (("echo", bool, "a boolean"), ("suffix", str, "a string")):
        value = _get(body, name, (kind,), what)
        if value is not None:
            request.options[name] = value
    return request


def embedding_request(body: Any) -> EmbeddingRequest:
    """A `/v1/embeddings` body."""
    body = _body(body)
    texts = _texts(body, "input", one=True)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest("encoding_format must be 'float' or 'base64'", param="encoding_format")
    dimensions = _get(body, "dimensions", (int,), "an integer")
    return EmbeddingRequest(_get(body, "model", (str,), "a string"), texts, encoding == "base64", dimensions)


def rerank_request(body: Any) -> RerankRequest:
    """A `/v1/rerank` body (also `/rerank`, `/v1/reranking`: llama-server's routes)."""
    body = _body(body)
    query = _get(body, "query", (str,), "a string")
    if query is None:
        raise BadRequest("query must be given, a string", param="query")
    tei = "texts" in body and "documents" not in body
    name = "texts" if tei else "documents"
    documents = _texts(body, name, one=False)
    if len(documents) > MAX_RERANK_DOCUMENTS:
        raise BadRequest(f"at most {MAX_RERANK_DOCUMENTS} {name} per request", param=name)
    top_n = _get(body, "top_n", (int,), "an integer")
    if top_n is not None and top_n < 1:
        raise BadRequest(f"top_n must be 1 or more, not {top_n}", param="top_n")
    flag = "return_text" if tei else "return_documents"
    return_text = bool(_get(body, flag, (bool,), "a boolean"))
    model = _get(body, "model", (str,), "a string")
    return RerankRequest(model, query, documents, len(documents) if top_n is None else top_n, tei, return_text)
