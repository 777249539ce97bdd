"""Fuzzing the server's request parser (`server/_requests.py`): request bodies come from strangers. Every body,
however mangled, is read into a request or refused with a `BadRequest` naming a field (a 400), never another
exception (a 500) and never unbounded work.

Randomized from valid chat, completion, embedding and rerank bodies, mutated at random places (values swapped
for other JSON values of any type, keys dropped, junk keys added, lists and nesting grown); the seed is
FUZZ_SEED mixed with the test's name (tests/fuzz/common.py), FUZZ_ITERATIONS the cases, and `./dev fuzz` runs
it for FUZZ_SECONDS.
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Callable
from typing import Any

from langchain_llamacpp.server import BadRequest, _requests
from tests.fuzz.common import fuzz_seconds, iterations, seed_for

TOOL = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object", "properties": {}}},
}
BODIES: dict[str, tuple[Callable[[Any], Any], dict[str, Any]]] = {
    "chat": (
        _requests.chat_request,
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": [{"type": "text", "text": "hi"},
                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
                {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                 "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "1", "content": "r"},
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
            "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0.5,
            "max_tokens": 8,
            "stop": ["x"],
            "seed": 1,
            "n": 2,
            "logprobs": True,
            "top_logprobs": 2,
            "reasoning_format": "auto",
            "reasoning_budget_tokens": 4,
            "logit_bias": {"1": 2},
            "dry_sequence_breakers": ["\n"],
        },
    ),
    "completion": (
        _requests.completion_request,
        {"prompt": ["a", "b"], "n": 2, "best_of": 2, "logprobs": 1, "echo": True, "suffix": "s", "max_tokens": 4},
    ),
    "embedding": (_requests.embedding_request, {"input": ["a", "b"], "encoding_format": "base64", "dimensions": 8}),
    "rerank": (_requests.rerank_request, {"query": "q", "documents": ["a", "b"], "top_n": 1, "return_documents": True}),
}  # fmt: skip
JUNK_KEYS = ["", "model", "n", "tools", "function", "type", "content", "role", "schema", "__proto__", "\u0000", "é"]
# One parse of a body under the server's 32 MiB limit takes milliseconds; seconds mean unbounded work.
BOUND_S = 2.0


def _value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "big", "float", "str", "bool", "null", "list", "dict"] if depth < 4 else ["int", "str", "null"]
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 7, 16, 17, 99, -2])
    if kind == "big":
        return rng.choice([2**31, 2**63, -(2**63) - 1, 2**70, 10**400])
    if kind == "float":
        return rng.choice([0.0, -0.5, 1e308, -1e-308, float("inf"), float("nan"), 2.5])
    if kind == "str":
        return rng.choice(["", "x", "auto", "none", "required", "function", "json_schema", "text", "\ud800", "{"])
    if kind == "bool":
        return rng.choice([True, False])
    if kind == "null":
        return None
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.choice([0, 1, 2, 40]))]
    return {rng.choice(JUNK_KEYS): _value(rng, depth + 1) for _ in range(rng.choice([0, 1, 3]))}


def _places(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into `value` (the keys and indexes to follow)."""
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _places(item, (*path, i))
    return out


def _mutate(rng: random.Random, body: dict[str, Any]) -> Any:
    body = copy.deepcopy(body)
    for _ in range(rng.choice([1, 1, 2, 4])):
        path = rng.choice(_places(body))
        if not path:
            if rng.random() < 0.05:
                return _value(rng)  # not an object at all
            body[rng.choice(JUNK_KEYS)] = _value(rng)
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        op = rng.choice(["set", "set", "set", "drop", "grow"])
        if op == "drop":
            del parent[path[-1]]
        elif op == "grow" and isinstance(parent[path[-1]], (list, str)):
            parent[path[-1]] = parent[path[-1]] * rng.choice([2, 20, 200])
        else:
            parent[path[-1]] = _value(rng)
    return body


def _check(kind: str, body: Any) -> None:
    parse = BODIES[kind][0]
    started = time.perf_counter()
    try:
        parse(body)
    except BadRequest as e:
        assert e.status == 400 and e.message
        json.dumps(e.body())  # what the server sends must serialize
    spent = time.perf_counter() - started
    assert spent < BOUND_S, f"parsing took {spent:.1f} s"


def test_mangled_bodies_are_requests_or_400s() -> None:
    rng = random.Random(seed_for("server_requests"))
    seconds = fuzz_seconds()
    deadline = time.monotonic() + seconds if seconds else None
    i = 0
    while (i < iterations(400)) if deadline is None else (time.monotonic() < deadline):
        kind = rng.choice(list(BODIES))
        body = _mutate(rng, BODIES[kind][1])
        try:
            _check(kind, body)
        except Exception as e:
            shown = json.dumps(body, default=repr)[:600]
            raise AssertionError(
                f"case {i} (FUZZ_SEED mixed with 'server_requests'), {kind}: {type(e).__name__}: {e}\n{shown}"
            ) from e
        i += 1


def test_the_valid_bodies_parse() -> None:
    """The fuzz starts from bodies that are right: each parses as it is."""
    for parse, body in BODIES.values():
        parse(copy.deepcopy(body))
