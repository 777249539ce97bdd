"""Tool-call recovery (langchain_llamacpp/_tool_calls.py): a call that a small model writes as JSON text
becomes a tool call only when it names a bound tool and its arguments validate; streaming shows nothing
that the final message takes back. No model: the replies are given as text."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessageChunk
from langchain_core.tools import tool
from pydantic import BaseModel

import langchain_llamacpp._native as _native
from langchain_llamacpp._chat_stream import ChatStream
from langchain_llamacpp._json_schema import schema_error
from langchain_llamacpp._messages import convert_tools_to_openai
from langchain_llamacpp._tool_calls import MAX_NESTING, MAX_SCAN, ToolCallRules, tool_call_recovery


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather in a city."""
    return "sunny"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


class Address(BaseModel):
    street: str
    zip_code: int


class Person(BaseModel):
    """Save a person."""

    name: str
    tags: list[str]
    address: Address | None = None


TOOLS = convert_tools_to_openai([get_weather, add, Person])
RULES = ToolCallRules.for_request(TOOLS, "auto", recover=True)
WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
ADD = '{"name": "add", "arguments": {"a": 2, "b": 3}}'


def calls(text: str, rules: ToolCallRules = RULES) -> list[tuple[str, dict[str, Any]]]:
    decision = rules.decide(text, [])
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in decision.tool_calls]


@pytest.mark.parametrize(
    "text",
    [
        WEATHER,
        f"  {WEATHER}\n",
        "{" + WEATHER + "}",  # Qwen's template shows calls in doubled braces
        "{{ " + WEATHER[1:-1] + " }}",
        f"```json\n{WEATHER}\n```",
        f"```\n{WEATHER}\n```",
        f"[{WEATHER}]",
        '{"type": "function", "function": {"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}}',
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ],
)
def test_a_call_written_as_json_is_recovered(text: str) -> None:
    decision = RULES.decide(text, [])
    assert decision.recovered and decision.content == ""
    assert calls(text) == [("get_weather", {"city": "Paris"})]


def test_a_call_after_text_is_recovered_and_the_text_stays() -> None:
    decision = RULES.decide(f"I will look it up.\n\n{WEATHER}", [])
    assert decision.content == "I will look it up."
    assert [c["function"]["name"] for c in decision.tool_calls] == ["get_weather"]


@pytest.mark.parametrize(
    "text", [f"{WEATHER}\n{ADD}", f"{WEATHER}, {ADD}", f"[{WEATHER}, {ADD}]", f"```json\n{WEATHER}\n{ADD}\n```"]
)
def test_several_calls(text: str) -> None:
    assert calls(text) == [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]


def test_nested_schema_arguments_validate() -> None:
    person = {"name": "Ada", "tags": ["math"], "address": {"street": "Main", "zip_code": 1}}
    assert calls(json.dumps({"name": "Person", "arguments": person})) == [("Person", person)]
    bad = {**person, "address": {"street": "Main", "zip_code": "one"}}
    assert calls(json.dumps({"name": "Person", "arguments": bad})) == []


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_wether", "arguments": {"city": "Paris"}}',  # not a bound tool
        '{"name": "get_weather", "arguments": {"town": "Paris"}}',  # required argument missing
        '{"name": "add", "arguments": {"a": "2", "b": 3}}',  # a string for an integer
        '{"name": "add", "arguments": {"a": true, "b": 3}}',  # a boolean is not an integer
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}',  # not in the enum
        '{"name": "get_weather", "arguments": "Paris"}',  # arguments not an object
        '{"name": "get_weather", "arguments": {"city": "Paris"}, "reason": "asked"}',  # not a call's key
        f"{WEATHER} is what I would call.",  # text after it: a mention, not a call
        f"{WEATHER}\n{{{{ broken",
        f"{WEATHER}\n" + '{"name": "nope", "arguments": {}}',  # one bad call keeps all as text
        "{" + WEATHER + "]",  # a doubled brace closed by something else
        "I can call get_weather with a city, or add with two integers.",
        '```python\nprint({"name": "add"})\n```',
    ],
)
def test_anything_else_stays_text(text: str) -> None:
    decision = RULES.decide(text, [])
    assert decision == type(decision)(text)  # content untouched, no calls, not recovered


def test_only_where_the_model_may_choose_and_not_when_turned_off() -> None:
    for choice, recover in [("auto", False), ("required", True), ("none", True)]:
        rules = ToolCallRules.for_request(TOOLS, choice, recover)
        assert not rules.decide(WEATHER, []).tool_calls
        assert rules.shown(WEATHER[:10]) == WEATHER[:10]
    assert not ToolCallRules.for_request([], "auto", True).decide(WEATHER, []).tool_calls


def test_the_parsers_own_calls_are_kept() -> None:
    parsed = [{"id": "x", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}}]
    decision = RULES.decide(WEATHER, parsed)
    assert decision.tool_calls == parsed and decision.content == WEATHER and not decision.recovered


def test_recovery_option_is_checked() -> None:
    assert tool_call_recovery({}, True) is True
    assert tool_call_recovery({"tool_call_recovery": False}, True) is False
    with pytest.raises(ValueError, match="tool_call_recovery must be True or False"):
        tool_call_recovery({"tool_call_recovery": "no"}, True)


# -- bounds: model output is untrusted -------------------------------------------------------------------


def _timed(text: str) -> tuple[float, bool]:
    start = time.perf_counter()
    recovered = RULES.decide(text, []).recovered
    RULES.shown(text)
    return time.perf_counter() - start, recovered


def test_deep_json_stays_text() -> None:
    deep = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    assert not RULES.decide('{"name": "Person", "arguments": {"name": "a", "tags": ' + deep + "}}", []).recovered
    assert not RULES.decide("[" * 100_000, []).recovered  # past Python's own recursion limit
    assert not RULES.decide('{"name": ' * 50_000, []).recovered


def test_only_the_tail_is_read() -> None:
    padding = "x" * 10
    call = '{"name": "Person", "arguments": {"name": "a", "tags": [' + ", ".join(['"t"'] * MAX_SCAN) + "]}}"
    assert len(call) > MAX_SCAN and not RULES.decide(padding + call, []).recovered
    assert RULES.decide("y" * (4 * MAX_SCAN) + "\n" + WEATHER, []).recovered


@pytest.mark.parametrize(
    "text",
    [
        ('{"name": "add", "arguments": {"a": 1, "b": 2}} x ' * 2000),  # many starts, each a call then garbage
        '{"name": ' * 20_000,
        "{" * 20_000,
        '{"name": "add", "arguments": {"a": 1, "b": 2}}\n' * 2000,  # many calls, only the tail's counted
    ],
)
def test_hostile_replies_take_bounded_work(text: str) -> None:
    # Not a timing assert on normal work: a guard against quadratic scans (these took minutes unbounded).
    elapsed, _ = _timed(text)
    assert elapsed < 2.0


def test_schema_check_is_bounded() -> None:
    wide: dict[str, Any] = {"anyOf": [{"type": "integer"}] * 50}
    for _ in range(6):
        wide = {"anyOf": [wide] * 10}
    assert schema_error("x", wide) is not None  # 10^6 alternatives would be checked unbounded
    assert schema_error({"a": 1}, {"$ref": "#"}) is not None  # a reference to itself ends


@pytest.mark.parametrize(
    ("value", "schema", "ok"),
    [
        (2.0, {"type": "integer"}, True),
        (True, {"type": "number"}, False),
        (None, {"type": ["string", "null"]}, True),
        ({"a": 1}, {"type": "object", "additionalProperties": False, "properties": {"b": {}}}, False),
        ({"a": 1}, {"type": "object", "additionalProperties": {"type": "integer"}}, True),
        ([1, "x"], {"type": "array", "items": {"type": "integer"}}, False),
        (1, {"oneOf": [{"type": "integer"}, {"type": "number"}]}, False),
        ("b", {"anyOf": [{"const": "a"}, {"enum": ["b"]}]}, True),
        (3, {"allOf": [{"type": "integer"}, {"enum": [3]}]}, True),
        ({"p": {"x": 1}}, {"$defs": {"P": {"required": ["y"]}}, "properties": {"p": {"$ref": "#/$defs/P"}}}, False),
        ("anything", {"format": "date-time", "minLength": 50}, True),  # not checked: the tool checks it
    ],
)
def test_schema_subset(value: Any, schema: dict[str, Any], ok: bool) -> None:
    assert (schema_error(value, schema) is None) is ok


# -- streaming shows nothing that the final message takes back ----------------------------------------


def _reply(tokens: list[str], *, stream: bool, rules: ToolCallRules = RULES) -> Any:
    """The message for a reply made of `tokens`, streamed chunk by chunk and added up, or built at once; the
    reader is ChatStream with llama.cpp's parser for a plain-content template."""
    parser = _native.ChatParser(0, "", "", True, "none")
    reader = ChatStream(parser, parse=True, tools=rules, logprobs=False, model_name="m", speculative=False)
    request: Any = SimpleNamespace(
        usage=SimpleNamespace(prompt_tokens=1, completion_tokens=len(tokens), cached_tokens=0),
        finish_reason="stop",
        stop_string="",
    )
    if not stream:
        return reader.message(request, [SimpleNamespace(text=t, token=0) for t in tokens])
    chunks = [c.message for c in reader.chunks(SimpleNamespace(text=t, token=0) for t in tokens)]
    total: AIMessageChunk = chunks[0] if chunks else AIMessageChunk(content="")
    for c in chunks[1:] + [c.message for c in reader.finish(request)]:
        total = total + c  # type: ignore[assignment]
    return total, chunks


STREAMED = [
    WEATHER,
    "{" + WEATHER + "}",
    f"```json\n{WEATHER}\n```",
    f"Let me check the weather.\n{WEATHER}",
    f"Sure: {WEATHER}\n{ADD}",
    '{"name": "get_weather", "arguments": {"city": 5}}',
    f"{WEATHER} is one way to ask.",
    "The answer is 5. {Braces} are fine, and so is `code` and ```\nfenced\n``` text.",
    "Plain prose\n\nin two paragraphs.\n",
]


@pytest.mark.parametrize("text", STREAMED)
def test_streaming_gives_the_same_message(text: str) -> None:
    tokens = [text[i : i + 3] for i in range(0, len(text), 3)]
    at_once = _reply(tokens, stream=False)
    total, chunks = _reply(tokens, stream=True)
    assert total.content == at_once.content
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in at_once.tool_calls]
    assert total.response_metadata == at_once.response_metadata
    # Nothing shown is taken back: each chunk's content extends what the message ends with.
    assert str(at_once.content).startswith("".join(str(c.content) for c in chunks))


def test_streaming_holds_back_only_what_may_be_a_call() -> None:
    text = f"The weather:\n{WEATHER}"
    tokens = [text[i : i + 2] for i in range(0, len(text), 2)]
    total, chunks = _reply(tokens, stream=True)
    shown = "".join(str(c.content) for c in chunks)
    assert shown == "The weather:"  # the prose came as it was written; the JSON never showed
    assert total.response_metadata["tool_calls_recovered"] is True
    assert total.response_metadata["finish_reason"] == "tool_calls"
    prose = "Plain prose, {not json} and [1] item."
    _, chunks = _reply(list(prose), stream=True)
    assert "".join(str(c.content) for c in chunks) == prose  # released as it came, before the end


def test_recovery_off_leaves_the_text_streaming_or_not() -> None:
    off = ToolCallRules.for_request(TOOLS, "auto", recover=False)
    message = _reply([WEATHER], stream=False, rules=off)
    assert message.content == WEATHER and not message.tool_calls
    assert "tool_calls_recovered" not in message.response_metadata
    total, _ = _reply(list(WEATHER), stream=True, rules=off)
    assert total.content == WEATHER and not total.tool_calls
