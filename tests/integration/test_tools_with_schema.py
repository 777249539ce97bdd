"""Tools and a response schema in the same request, on Qwen2.5-Coder-1.5B: one grammar lets each reply be a
tool call in the template's format or the schema's JSON (`_tool_calls.call_or_answer_grammar`), so an agent
with `response_format` looks the answer up with a tool and then answers in the schema."""

from __future__ import annotations

import json
from typing import Any

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import ModelCallLimitMiddleware
from langchain.agents.structured_output import ToolStrategy
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from pydantic import BaseModel, Field

from langchain_llamacpp import ChatLlamaCpp
from tests import models

SYSTEM = "Look the weather up with the tool, then give the forecast."
QUESTION = "Do I need an umbrella in Oslo today?"


@tool
def get_weather(city: str) -> str:
    """Today's weather in a city: sunny, cloudy or rainy."""
    return {"paris": "sunny", "oslo": "rainy"}.get(city.lower(), "cloudy")


class Forecast(BaseModel):
    city: str
    conditions: str = Field(description="sunny, cloudy or rainy")
    umbrella: bool = Field(description="whether to take an umbrella")


@pytest.fixture(scope="module")
def qwen15() -> ChatLlamaCpp:
    try:
        path = str(models.get("qwen15"))
    except Exception as e:  # a missing model is a failure, not a skip: CI must have them
        pytest.fail(f"could not fetch the qwen15 test model: {e}")
    return ChatLlamaCpp(model_path=path, temperature=0, max_tokens=64, verbose=False)


def _expected(forecast: Any) -> None:
    assert isinstance(forecast, Forecast), forecast
    assert (forecast.city.lower(), forecast.conditions.lower(), forecast.umbrella) == ("oslo", "rainy", True)


def test_each_reply_is_a_call_or_an_answer_in_the_schema(qwen15: ChatLlamaCpp) -> None:
    bound = qwen15.bind_tools([get_weather], json_schema=Forecast.model_json_schema())
    messages = [SystemMessage(SYSTEM), HumanMessage(QUESTION)]
    first = bound.invoke(messages)
    # The model may call or answer at once (the 1.5B answers at once, guessing the weather right).
    if first.tool_calls:
        assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"city": "Oslo"})]
    else:
        Forecast.model_validate_json(str(first.content))
    # After the tool's result, the answer is the schema's JSON.
    call = AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Oslo"}, "id": "call_1"}])
    result = ToolMessage(get_weather.invoke({"city": "Oslo"}), tool_call_id="call_1")
    second = bound.invoke([*messages, call, result])
    assert second.tool_calls == []
    _expected(Forecast.model_validate(json.loads(str(second.content))))


def _tool_calls(messages: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(c["name"], c["args"]) for m in messages if isinstance(m, AIMessage) for c in m.tool_calls]


@pytest.mark.parametrize("strategy", ["provider", "tool"])
def test_create_agent_with_response_format(qwen15: ChatLlamaCpp, strategy: str) -> None:
    response_format: Any = Forecast if strategy == "provider" else ToolStrategy(Forecast)
    agent = create_agent(
        qwen15,
        tools=[get_weather],
        response_format=response_format,
        system_prompt=SYSTEM,
        middleware=[ModelCallLimitMiddleware(run_limit=4, exit_behavior="end")],
    )
    result = agent.invoke({"messages": [("user", QUESTION)]})
    _expected(result.get("structured_response"))
    calls = _tool_calls(result["messages"])
    assert all(call == ("get_weather", {"city": "Oslo"}) for call in calls if call[0] == "get_weather")
    if strategy == "tool":
        assert calls[-1][0] == "Forecast"  # the answer is a call of the schema's tool
    else:
        assert all(name == "get_weather" for name, _ in calls)  # the answer is the reply's content
