"""The pure step of a chat call (`_chat_request.chat_request`): messages and options to what the template
is rendered with and how the reply is read. No model, engine or template worker is involved."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

from langchain_llamacpp._chat_request import ChatRequest, chat_request


def _tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": name, "parameters": {"type": "object", "properties": {}}},
    }


TOOLS = [_tool("get_weather"), _tool("get_time")]
SCHEMA = {"title": "Answer", "type": "object", "properties": {"text": {"type": "string"}}}
HELLO: list[BaseMessage] = [SystemMessage("Be brief."), HumanMessage("hello")]


def _request(
    chat_options: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    messages: list[BaseMessage] = HELLO,
    *,
    reasoning: bool | None = None,
    enable_thinking: bool = True,
    media_marker: str | None = None,
    reasoning_budget: int | None = None,
) -> ChatRequest:
    return chat_request(
        messages,
        chat_options or {},
        {"grammar": None, "grammar_path": None, **(options or {})},
        reasoning=reasoning,
        enable_thinking=enable_thinking,
        media_marker=media_marker,
        reasoning_budget=reasoning_budget,
    )


def test_plain_messages() -> None:
    request = _request()
    assert json.loads(request.render.messages_json) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]
    assert (request.render.tools_json, request.render.json_schema, request.render.tool_choice) == ("", "", "auto")
    assert request.render.add_generation_prompt
    assert request.tools == [] and not request.parses_tool_calls and not request.tool_call_rules(True).recover
    assert request.media == [] and request.grammar is None


def test_tools_the_model_may_call() -> None:
    request = _request({"tools": TOOLS, "parallel_tool_calls": True})
    assert request.tool_choice == "auto" and request.render.tool_choice == "auto"
    assert json.loads(request.render.tools_json) == TOOLS
    assert request.render.parallel_tool_calls
    assert request.parses_tool_calls
    rules = request.tool_call_rules(True)
    assert rules.recover and list(rules.schemas) == ["get_weather", "get_time"]  # a call written as JSON counts
    assert not request.tool_call_rules(False).recover  # unless turned off


@pytest.mark.parametrize(
    "choice", ["get_time", {"type": "function", "function": {"name": "get_time"}}, {"name": "get_time"}]
)
def test_a_forced_tool_is_the_only_one_shown(choice: Any) -> None:
    request = _request({"tools": TOOLS, "tool_choice": choice})
    assert request.tool_choice == "required"
    assert [t["function"]["name"] for t in json.loads(request.render.tools_json)] == ["get_time"]
    assert request.parses_tool_calls
    assert not request.tool_call_rules(True).recover  # the grammar makes the call: no JSON recovery


def test_tool_choice_true_forces_the_only_tool_or_any() -> None:
    assert [t["function"]["name"] for t in _request({"tools": TOOLS[:1], "tool_choice": True}).tools] == ["get_weather"]
    several = _request({"tools": TOOLS, "tool_choice": True})
    assert several.tool_choice == "required" and len(several.tools) == 2


def test_tool_choice_none_offers_the_tools_but_reads_no_calls() -> None:
    request = _request({"tools": TOOLS, "tool_choice": "none"})
    assert request.render.tool_choice == "none"
    assert request.render.tools_json  # the template still describes them
    assert not request.parses_tool_calls and not request.tool_call_rules(True).recover


def test_unknown_tool_choice_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        _request({"tools": TOOLS, "tool_choice": "nope"})
    with pytest.raises(ValueError, match="unsupported tool_choice 42"):
        _request({"tools": TOOLS, "tool_choice": 42})


def test_a_tool_choice_without_tools_is_ignored() -> None:
    assert _request({"tool_choice": "required"}).tool_choice == "auto"


def test_a_schema_beside_tools_the_model_may_call_is_rendered_apart() -> None:
    request = _request({"tools": TOOLS, "json_schema": SCHEMA})
    # llama.cpp would drop the tools for the schema: the tools are rendered, the schema's grammar is added.
    assert request.render.json_schema == "" and json.loads(request.answer_schema) == SCHEMA
    assert request.render.tools_json and request.parses_tool_calls
    rules = request.tool_call_rules(True)
    assert rules.structured and not rules.recover  # the grammar holds calls and answer: no JSON recovery
    # With tool calls off, the schema is the request's own; with a call forced, there is no answer to shape.
    off = _request({"tools": TOOLS, "tool_choice": "none", "json_schema": SCHEMA})
    assert json.loads(off.render.json_schema) == SCHEMA and off.answer_schema == ""
    forced = _request({"tools": TOOLS, "tool_choice": "get_time", "json_schema": SCHEMA})
    assert forced.render.json_schema == forced.answer_schema == "" and not forced.structured


def test_response_format_as_langchain_agents_bind_it() -> None:
    spec = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": SCHEMA, "strict": True}}
    request = _request({"response_format": spec})
    assert json.loads(request.render.json_schema) == SCHEMA and request.structured
    assert json.loads(_request({"response_format": {"type": "json_object"}}).render.json_schema) == {"type": "object"}
    assert _request({"response_format": {"type": "text"}}).render.json_schema == ""
    with pytest.raises(ValueError, match="unsupported response_format"):
        _request({"response_format": {"type": "json_schema"}})
    with pytest.raises(ValueError, match="either json_schema or response_format"):
        _request({"response_format": spec, "json_schema": SCHEMA})


def test_a_schema_separates_the_thinking() -> None:
    # The answer held to the schema is the content alone, whatever `reasoning` is.
    assert _request({"json_schema": SCHEMA}).render.reasoning_format == "auto"
    off = _request({"json_schema": SCHEMA}, reasoning=False)
    assert off.render.reasoning_format == "auto" and not off.render.enable_thinking


@pytest.mark.parametrize(("field", "per_call", "budget"), [(None, None, None), (64, None, 64), (64, 0, 0)])
def test_reasoning_budget(field: int | None, per_call: int | None, budget: int | None) -> None:
    chat_options = {} if per_call is None else {"reasoning_budget": per_call}
    assert _request(chat_options, reasoning_budget=field).reasoning_budget == budget


@pytest.mark.parametrize("value", [-1, 1.5, True, "64", 2**31])
def test_reasoning_budget_is_a_number_of_tokens(value: Any) -> None:
    with pytest.raises(ValueError, match="reasoning_budget must be a number of tokens"):
        _request({"reasoning_budget": value})


def test_a_grammar_with_tools_or_a_schema_is_refused() -> None:
    grammar = {"grammar": 'root ::= "yes"'}
    with pytest.raises(ValueError, match="a custom grammar cannot be combined with tools or structured output"):
        _request({"tools": TOOLS}, grammar)
    with pytest.raises(ValueError, match="a custom grammar cannot be combined"):
        _request({"json_schema": SCHEMA}, grammar)
    assert _request({"tools": TOOLS, "tool_choice": "none"}, grammar).grammar == 'root ::= "yes"'
    assert _request({}, {"grammar_path": "json"}).grammar is not None  # a bundled grammar, by name


@pytest.mark.parametrize(
    ("field", "per_call", "enable_thinking", "reasoning", "thinking", "reasoning_format"),
    [
        (None, None, True, None, True, "none"),  # the model's default: thinking stays in the text
        (True, None, True, True, True, "auto"),
        (False, None, True, False, False, "auto"),  # off, and the empty thinking block stripped
        (None, True, True, True, True, "auto"),
        (True, False, True, False, False, "auto"),  # the call's value wins
        (True, None, False, True, False, "auto"),  # enable_thinking=False turns thinking off
    ],
)
def test_reasoning(
    field: bool | None,
    per_call: bool | None,
    enable_thinking: bool,
    reasoning: bool | None,
    thinking: bool,
    reasoning_format: str,
) -> None:
    chat_options = {} if per_call is None else {"reasoning": per_call}
    request = _request(chat_options, reasoning=field, enable_thinking=enable_thinking)
    assert request.reasoning is reasoning
    assert request.render.enable_thinking is thinking
    assert request.render.reasoning_format == reasoning_format


def test_reasoning_must_be_a_bool_or_none() -> None:
    with pytest.raises(ValueError, match="reasoning must be True, False or None, not 'yes'"):
        _request({"reasoning": "yes"})


def test_images_become_markers_and_files_in_order() -> None:
    pngs = [b"\x89PNG first", b"\x89PNG second"]
    blocks = [{"type": "image", "base64": base64.b64encode(p).decode(), "mime_type": "image/png"} for p in pngs]
    message = HumanMessage(content=[blocks[0], {"type": "text", "text": "and"}, blocks[1]])
    request = _request(messages=[message], media_marker="<__media__>")
    assert request.media == pngs
    assert json.loads(request.render.messages_json)[0]["content"].count("<__media__>") == 2
    with pytest.raises(ValueError, match="needs a multimodal model: pass mmproj_path="):
        _request(messages=[message], media_marker=None)


def test_text_llama_cpp_cannot_take_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^messages\[0\]\['content'\] contains a lone surrogate"):
        _request(messages=[HumanMessage("bad \ud800")])
    tool = _tool("lookup")
    tool["function"]["description"] = "\ud800"
    with pytest.raises(ValueError, match=r"^tools\[0\]\['function'\]\['description'\] contains a lone surrogate"):
        _request({"tools": [tool]})
