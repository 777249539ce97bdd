"""Fuzzing the parsers that read model output in Python: tool-call recovery (`_tool_calls.py`) and the bounded
schema check (`_json_schema.py`). Model output is hostile input (a model can be prompted into anything), and
`shown()` runs at every chunk of a stream, so each call must stay cheap whatever the text.

Randomized from snippets of calls, JSON, fences and prose, mutated; the seed is FUZZ_SEED mixed with the test's
name (tests/fuzz/common.py), FUZZ_ITERATIONS the cases, and `./dev fuzz` runs them for FUZZ_SECONDS.
Checked: no exception, a recovered call names a bound tool with arguments that pass the schema, the content is
the text's beginning, streaming never shows what the final message takes back, and every call returns within a
bound far above its cost (a hang, not a speed, is what fails).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from langchain_llamacpp import _tool_calls
from langchain_llamacpp._json_schema import schema_error
from langchain_llamacpp._tool_calls import ToolCallRules
from tests.fuzz.common import fuzz_seconds, iterations, seed_for

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                "required": ["a", "b"],
                "additionalProperties": False,
            },
        },
    },
]
RULES = ToolCallRules.for_request(TOOLS, "auto", recover=True)
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}

CALLS = [
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '{"name": "add", "arguments": {"a": 2, "b": 3}}',
    '{"type": "function", "function": {"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}}',
    '[{"name": "get_weather", "parameters": {"city": "Rome", "unit": "celsius"}}]',
    '{{"name": "add", "args": {"a": 5, "b": 8}}}',
]
PIECES = [
    *CALLS, "{", "}", "[", "]", "{{", "}}", '"', "\\", ":", ",", " ", "\n", "```", "```json\n", "`", '"name"',
    '"arguments"', '"function"', '"get_weather"', '"add"', '"city"', "1", "-0.5e3", "null", "true", "The answer",
    " is here. ", "\u00e9t\u00e9 ", "\ud83d\ude00", '{"a": ', '{"name": 1}', "[[[[[[[[", "{" * 40, "[" * 300,
]  # fmt: skip
# One call on up to ~20k characters takes milliseconds; seconds mean the work is not bounded.
BOUND_S = 2.0


def _text(rng: random.Random) -> str:
    pieces = [rng.choice(PIECES) for _ in range(rng.choice([1, 3, 10, 40]))]
    for _ in range(rng.choice([0, 1, 3])):
        i = rng.randrange(len(pieces) + 1)
        pieces[i:i] = [rng.choice(PIECES)] * rng.choice([1, 2, 50, 400])
    if rng.random() < 0.5:
        pieces.append(rng.choice(CALLS))  # a call at the end, where recovery looks for it
    return "".join(pieces)


def _timed(fn: Callable[[], Any], what: str, text: str) -> Any:
    t0 = time.perf_counter()
    result = fn()
    spent = time.perf_counter() - t0
    assert spent < BOUND_S, f"{what} took {spent:.1f} s on {len(text)} characters: {text[:200]!r}..."
    return result


class _CountingDecoder:
    """json's raw_decode, counting the characters it reads (to where it fails)."""

    def __init__(self) -> None:
        self.inner = json.JSONDecoder()
        self.chars = 0

    def raw_decode(self, s: str, idx: int = 0) -> tuple[Any, int]:
        try:
            value, end = self.inner.raw_decode(s, idx)
        except json.JSONDecodeError as e:
            self.chars += e.pos - idx + 1  # where it failed
            raise
        except (ValueError, RecursionError):
            self.chars += len(s) - idx
            raise
        self.chars += end - idx
        return value, end


@pytest.fixture(autouse=True)
def counting(monkeypatch: pytest.MonkeyPatch) -> _CountingDecoder:
    decoder = _CountingDecoder()
    monkeypatch.setattr(_tool_calls, "_DECODER", decoder)
    return decoder


# The JSON one shown() call may parse (it runs at every chunk of a stream): the scanned tail a few times over,
# not once per place a call may start. decide() runs once per reply and may read the tail from each of its
# MAX_STARTS starts (calls left unclosed to the end, each inside the one before).
SHOWN_BUDGET = 4 * _tool_calls.MAX_SCAN
DECIDE_BUDGET = _tool_calls.MAX_STARTS * _tool_calls.MAX_SCAN


def _parsed(fn: Callable[[], Any], what: str, text: str, budget: int = SHOWN_BUDGET) -> Any:
    decoder = _tool_calls._DECODER
    assert isinstance(decoder, _CountingDecoder)
    before = decoder.chars
    result = _timed(fn, what, text)
    read = decoder.chars - before
    assert read <= budget, f"{what} parsed {read} characters of JSON in a {len(text)}-character reply: {text[:200]!r}"
    return result


def _check_reply(text: str) -> None:
    decision = _parsed(lambda: RULES.decide(text, []), "decide()", text, DECIDE_BUDGET)
    assert text.startswith(decision.content), "the content must be the reply's beginning"
    if decision.recovered:
        assert decision.tool_calls
        for call in decision.tool_calls:
            name, args = call["function"]["name"], json.loads(call["function"]["arguments"])
            assert name in SCHEMAS and schema_error(args, SCHEMAS[name]) is None, call
    step = max(1, len(text) // 25)
    for end in [*range(0, len(text), step), len(text)]:
        partial = text[:end]
        shown = _parsed(functools.partial(RULES.shown, partial), "shown()", partial)
        assert partial.startswith(shown)
        assert decision.content.startswith(shown) or not decision.recovered, (
            f"streaming showed {shown[-80:]!r}, which the final message takes back: {decision.content[-80:]!r}"
        )


def test_recovery_on_random_replies() -> None:
    rng = random.Random(seed_for("tool_calls"))
    seconds = fuzz_seconds()
    deadline = time.monotonic() + seconds if seconds else None
    i = 0
    while (i < iterations(150)) if deadline is None else (time.monotonic() < deadline):
        text = _text(rng)
        try:
            _check_reply(text)
        except AssertionError as e:
            raise AssertionError(f"case {i} (FUZZ_SEED mixed with 'tool_calls'): {e}") from None
        i += 1


@pytest.mark.parametrize(
    "text",
    [
        "[" * 20_000,
        "{" * 20_000,
        "{{" * 10_000,
        '{"name": 1} ' * 3_000,
        '{"name": "get_weather", "arguments": ' * 2_000,
        '{"name": "get_weather", "arguments": ' + '{"a": ' * 5_000 + "1" + "}" * 5_001,
        "```json\n" * 5_000,
        "[" + ", ".join(f'{{"name": "n{i}", "age": {i}}}' for i in range(600)) + "]",
        CALLS[1] * 300 + " and that is all.",
    ],
    ids=["brackets", "braces", "doubled", "many-starts", "open-calls", "deep-args", "fences", "records", "then-text"],
)
def test_pathological_replies_are_bounded(text: str) -> None:
    """Texts that once cost ~0.1-0.4 s per shown() call (so per streamed chunk), or 0.75 s per decide(): runs of
    brackets tried one by one, runs of JSON objects parsed to the end before the first was found not to be a
    call, and a run of calls ending in text parsed again from each call on."""
    _check_reply(text)


def _schema(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["type", "enum", "object", "array", "anyOf", "ref", "bool"] if depth < 6 else ["type", "enum"]
    kind = rng.choice(kinds)
    if kind == "type":
        return {"type": rng.choice(["string", "integer", "number", "boolean", "object", "array", "null", "nope"])}
    if kind == "enum":
        return {"enum": [rng.choice([1, "a", None, [1], {"a": 1}]) for _ in range(rng.randint(0, 3))]}
    if kind == "object":
        props = {f"p{i}": _schema(rng, depth + 1) for i in range(rng.randint(0, 3))}
        return {"type": "object", "properties": props, "required": list(props)[: rng.randint(0, len(props))]}
    if kind == "array":
        return {"type": "array", "items": _schema(rng, depth + 1)}
    if kind == "anyOf":
        return {rng.choice(["anyOf", "oneOf", "allOf"]): [_schema(rng, depth + 1) for _ in range(rng.randint(1, 4))]}
    if kind == "ref":
        return {"$ref": rng.choice(["#", "#/properties/p0", "#/$defs/x", "#/nowhere", "http://x"])}
    return rng.choice([True, False])


def _value(rng: random.Random, depth: int = 0) -> Any:
    if depth > 5:
        return rng.choice([1, "s", None, True])
    kind = rng.choice(["int", "float", "str", "bool", "null", "list", "dict"])
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if kind == "dict":
        return {f"p{i}": _value(rng, depth + 1) for i in range(rng.randint(0, 3))}
    return {"int": 3, "float": 2.5, "str": "x", "bool": False, "null": None}[kind]


def test_schema_check_on_random_schemas() -> None:
    rng = random.Random(seed_for("json_schema"))
    for _ in range(iterations(300)):
        schema, value = _schema(rng), _value(rng)
        if rng.random() < 0.3:
            schema = {"$defs": {"x": schema}, "anyOf": [{"$ref": "#/$defs/x"}, {"$ref": "#"}]}
        error = _timed(functools.partial(schema_error, value, schema), "schema_error()", str(schema))
        assert error is None or isinstance(error, str)


def test_schema_check_of_an_exponential_schema_is_bounded() -> None:
    """anyOf of anyOf... 20 levels deep (2**20 paths) and a self-reference: the step bound answers first."""
    schema: Any = {"type": "integer"}
    for _ in range(20):
        schema = {"anyOf": [{"type": "string"}, schema, schema]}
    error = _timed(lambda: schema_error(1.5, schema), "schema_error()", "nested anyOf")
    assert error is not None
    looping = {"anyOf": [{"$ref": "#"}, {"$ref": "#"}]}
    assert _timed(lambda: schema_error(1, looping), "schema_error()", "self-reference") is not None
