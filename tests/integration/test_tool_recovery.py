"""Tool-call recovery on a real small model: after a tool result, Qwen2.5-Coder-0.5B writes its next call as
JSON text instead of its template's <tool_call> tags; with tools bound, that text is read as the call."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool

from langchain_llamacpp import ChatLlamaCpp


@tool
def get_country(city: str) -> str:
    """Get the country that a city is in."""
    return "France"


@tool
def get_capital(country: str) -> str:
    """Get the capital city of a country."""
    return "Paris"


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return "rainy, 12 degrees C"


# The first step done: the model has the country, and its next step is to ask for the capital.
CONVERSATION: list[BaseMessage] = [
    SystemMessage("Use the tools to find what you need, one step at a time. When you have the result, answer briefly."),
    HumanMessage("What is the weather in the capital of the country that Lyon is in?"),
    AIMessage("", tool_calls=[{"name": "get_country", "args": {"city": "Lyon"}, "id": "call_1"}]),
    ToolMessage("France", tool_call_id="call_1", name="get_country"),
]


@pytest.fixture(scope="module")
def qwen_tools(qwen_path: str) -> ChatLlamaCpp:
    # batch_invariant: the cached prompt of the second call gives the tokens of the first (the default kernels
    # round differently at another batch size, and this reply has near ties: 2 calls, then 10 and cut).
    return ChatLlamaCpp(model_path=qwen_path, temperature=0, max_tokens=160, batch_invariant=True)


def test_a_call_written_as_text_after_a_tool_result_is_recovered(qwen_tools: ChatLlamaCpp) -> None:
    # The model writes one call per line and goes on with calls for other cities (ten and more, until
    # max_tokens cuts the last in half: then all of it stays text); a newline stop keeps its first call.
    bound = qwen_tools.bind_tools([get_country, get_capital, get_weather], stop=["\n"])
    written = bound.invoke(CONVERSATION, tool_call_recovery=False)
    # What the model wrote: the call as JSON text, which llama.cpp's parser for its template does not read.
    assert not written.tool_calls and str(written.content).startswith('{"name": "get_capital"')
    assert "tool_calls_recovered" not in written.response_metadata

    recovered = bound.invoke(CONVERSATION)
    assert [(c["name"], c["args"]) for c in recovered.tool_calls] == [("get_capital", {"country": "France"})]
    assert recovered.response_metadata["tool_calls_recovered"] is True
    assert recovered.response_metadata["finish_reason"] == "tool_calls"
    assert '"get_capital"' not in str(recovered.content)

    # Streamed: the JSON never shows as content, and the chunks add up to the same message.
    chunks = list(bound.stream(CONVERSATION))
    total: AIMessageChunk = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk  # type: ignore[assignment]
    assert total.content == recovered.content
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in recovered.tool_calls]
    assert total.response_metadata["tool_calls_recovered"] is True
