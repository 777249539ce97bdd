"""ChatLlamaCpp on real models: templates, tool calling, structured output, agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, Field

from langchain_llamacpp import ChatLlamaCpp
from tests.tiny_model import write_tiny_model


@pytest.fixture(scope="module")
def qwen(qwen_path: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=qwen_path, temperature=0, max_tokens=128, n_seq=4, seed=5)


@pytest.fixture(scope="module")
def smollm(smollm_path: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=smollm_path, temperature=0, max_tokens=48)


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"It is sunny and 22 degrees in {city}."


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def get_time(timezone: str) -> str:
    """Get the current time in a timezone, such as Europe/Paris."""
    return "12:00"


class WeatherInput(BaseModel):
    location: str = Field(description="The city and state, e.g. San Francisco, CA")
    unit: Literal["celsius", "fahrenheit"]


@tool("get_current_weather", args_schema=WeatherInput)
def get_current_weather(location: str, unit: str) -> str:
    """Get the current weather in a given location"""
    return f"Now the weather in {location} is 22 {unit}"


class MagicFunctionInput(BaseModel):
    magic_function_input: int = Field(description="The input value for magic function")


@tool("get_magic_function", args_schema=MagicFunctionInput)
def magic_function(magic_function_input: int) -> int:
    """Get the value of magic function for an input."""
    return magic_function_input + 2


def test_chat_template_is_applied(smollm: ChatLlamaCpp) -> None:
    reply = smollm.invoke([("system", "You are a helpful assistant."), ("human", "What is the capital of France?")])
    assert "Paris" in str(reply.content)
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] > 10
    assert reply.response_metadata["finish_reason"] in ("stop", "length")


def test_translation_from_the_seed_docs(qwen: ChatLlamaCpp) -> None:
    messages = [
        ("system", "You are a helpful assistant that translates English to French. Translate the user sentence."),
        ("human", "I love programming."),
    ]
    assert "programm" in str(qwen.invoke(messages).content).lower()


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("What's the weather like in Paris right now?", "get_weather"),
        ("What is 6 multiplied by 7? Use the tool.", "multiply"),
        ("What time is it now in Europe/Berlin?", "get_time"),
    ],
)
def test_auto_tool_choice_picks_the_right_tool(qwen: ChatLlamaCpp, question: str, expected: str) -> None:
    msg = qwen.bind_tools([get_weather, multiply, get_time], tool_choice="auto").invoke(question)
    assert [c["name"] for c in msg.tool_calls] == [expected]
    assert msg.tool_calls[0]["id"]
    assert msg.response_metadata["finish_reason"] == "tool_calls"


def test_auto_answers_plainly_when_no_tool_fits(qwen: ChatLlamaCpp) -> None:
    msg = qwen.bind_tools([get_weather, multiply]).invoke("Write a haiku about the sea. Do not call any tool.")
    assert msg.tool_calls == []
    assert len(str(msg.content)) > 10


def test_seed_forced_tool_weather(qwen: ChatLlamaCpp) -> None:
    llm = qwen.bind_tools(
        tools=[get_current_weather],
        tool_choice={"type": "function", "function": {"name": "get_current_weather"}},
    )
    msg = llm.invoke("what is the weather like in HCMC in celsius")
    assert len(msg.tool_calls) == 1
    call = msg.tool_calls[0]
    assert call["name"] == "get_current_weather"
    assert call["args"]["unit"] == "celsius"
    assert "HCMC" in call["args"]["location"] or "Ho Chi Minh" in call["args"]["location"]


def test_seed_forced_tool_magic_function(qwen: ChatLlamaCpp) -> None:
    llm = qwen.bind_tools(
        tools=[magic_function],
        tool_choice={"type": "function", "function": {"name": "get_magic_function"}},
    )
    msg = llm.invoke("What is magic function of 3?")
    assert msg.tool_calls[0]["name"] == "get_magic_function"
    assert msg.tool_calls[0]["args"] == {"magic_function_input": 3}


def test_forced_arguments_match_the_schema(qwen: ChatLlamaCpp) -> None:
    llm = qwen.bind_tools([multiply], tool_choice="any")
    for question in ["Multiply three by four.", "Tell me a story.", "¿Cuánto es ocho por nueve?"]:
        msg = llm.invoke(question)
        assert msg.tool_calls and msg.tool_calls[0]["name"] == "multiply"
        args = msg.tool_calls[0]["args"]
        assert set(args) == {"a", "b"} and all(isinstance(v, int) for v in args.values())


def test_parallel_tool_calls(qwen: ChatLlamaCpp) -> None:
    llm = qwen.bind_tools([get_weather], tool_choice="any", parallel_tool_calls=True)
    msg = llm.invoke("Get the weather for Paris and for Berlin: call the tool once for each city.")
    cities = sorted(c["args"]["city"] for c in msg.tool_calls)
    assert cities == ["Berlin", "Paris"]
    assert len({c["id"] for c in msg.tool_calls}) == 2


@pytest.mark.parametrize("tool_choice", ["auto", "any"])
def test_streamed_tool_chunks_aggregate_to_invoke(qwen: ChatLlamaCpp, tool_choice: str) -> None:
    llm = qwen.bind_tools([get_weather, multiply], tool_choice=tool_choice)
    question = "What's the weather in Rome?"
    invoked = llm.invoke(question)
    chunks = list(llm.stream(question))
    total: AIMessageChunk = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk  # type: ignore[assignment]
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in invoked.tool_calls]
    named = [tc for chunk in chunks for tc in chunk.tool_call_chunks if tc.get("name")]
    assert [tc["name"] for tc in named] == ["get_weather"]  # each name exactly once
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata is not None


def test_tool_message_round_trip(qwen: ChatLlamaCpp) -> None:
    llm = qwen.bind_tools([multiply])
    question = HumanMessage("What is 12 times 13? Use the multiply tool.")
    first = llm.invoke([question])
    assert first.tool_calls
    result = multiply.invoke(first.tool_calls[0])
    assert isinstance(result, ToolMessage)
    # A 0.5B model with the tool still bound tends to call it again; without it, it must use the result.
    final = qwen.invoke([question, first, result])
    assert "156" in str(final.content)


class Joke(BaseModel):
    """A setup to a joke and the punchline."""

    setup: str
    punchline: str


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_structured_output_always_validates(qwen: ChatLlamaCpp, method: str) -> None:
    structured = qwen.bind(max_tokens=200).with_structured_output(Joke, method=method)  # type: ignore[attr-defined]
    for topic in ["birds", "cats", "compilers"]:
        joke = structured.invoke(f"Tell me a joke about {topic}")
        assert isinstance(joke, Joke) and joke.setup and joke.punchline


def test_structured_output_from_convert_to_openai_tool(qwen: ChatLlamaCpp) -> None:
    # The seed docs' form: an OpenAI tool dict.
    structured = qwen.with_structured_output(convert_to_openai_tool(Joke))
    result = structured.invoke("Tell me a joke about birds")
    assert isinstance(result, dict) and set(result) >= {"setup", "punchline"}


def test_json_mode(qwen: ChatLlamaCpp) -> None:
    structured = qwen.with_structured_output(Joke, method="json_mode", include_raw=True)
    out: Any = structured.invoke("Tell me a joke about cats. Reply as JSON with keys setup and punchline.")
    assert isinstance(out["raw"], AIMessage)
    json.loads(str(out["raw"].content))


def test_agent_completes_a_two_step_task(qwen_path: str) -> None:
    from langchain.agents import create_agent

    @tool
    def get_population(city: str) -> int:
        """Get the population of a city, in millions."""
        return {"paris": 2, "berlin": 4}.get(city.lower(), 1)

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    model = ChatLlamaCpp(model_path=qwen_path, temperature=0, max_tokens=128)
    agent = create_agent(model, tools=[get_population, add])
    result = agent.invoke(
        {"messages": [HumanMessage("Get the population of Paris with the tool, then add 5 to it with the add tool.")]}
    )
    messages = result["messages"]
    tool_results = [(m.name, m.content) for m in messages if isinstance(m, ToolMessage)]
    # Both steps ran, the second on the first one's result, and the agent stopped on a final reply.
    # (The wording of that reply is the 0.5B model's; it is not what this test is about.)
    assert tool_results[:2] == [("get_population", "2"), ("add", "7")]
    assert isinstance(messages[-1], AIMessage) and not messages[-1].tool_calls


def test_template_with_cve_2024_34359_payload_executes_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payloads = [
        # The advisory's payload: reach Python's builtins from a template.
        "{% for x in ().__class__.__base__.__subclasses__() %}{% if 'warning' in x.__name__ %}"
        f"{{{{x()._module.__builtins__['__import__']('os').popen('touch {marker}').read()}}}}"
        "{% endif %}{% endfor %}{% for m in messages %}{{ m['content'] }}{% endfor %}",
        f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}"
        "{% for m in messages %}{{ m['content'] }}{% endfor %}",
    ]
    for i, payload in enumerate(payloads):
        path = write_tiny_model(tmp_path / f"evil{i}.gguf", chat_template=payload)
        chat = ChatLlamaCpp(model_path=str(path), max_tokens=2)
        with pytest.raises(ValueError, match="template"):
            chat.invoke("hi")
        assert not marker.exists()


def test_chat_template_override(smollm_path: str) -> None:
    template = "{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}\n{% endfor %}<<assistant>>"
    chat = ChatLlamaCpp(model_path=smollm_path, chat_template=template, temperature=0, max_tokens=4)
    engine = chat.load()
    engine.clear_cache()
    usage = chat.invoke("Hello").usage_metadata
    # The prompt is the override's rendering token for token (a count alone would also pass with the
    # role misnamed: "<<human>>" is as long), and nothing like the model's own ChatML one.
    expected = chat.native_model.tokenize("<<user>>Hello\n<<assistant>>", add_special=True, parse_special=True)
    assert usage is not None and usage["input_tokens"] == len(expected)
    cached = [engine.slot_tokens(slot) for slot in range(engine.n_seq)]
    assert [tokens[: len(expected)] for tokens in cached if tokens] == [expected]
    own = ChatLlamaCpp(model_path=smollm_path, temperature=0, max_tokens=4).invoke("Hello").usage_metadata
    assert own is not None and own["input_tokens"] != len(expected)


def test_structured_output_with_include_raw_passes_the_call_options_on(smollm_path: str) -> None:
    """`with_structured_output(..., include_raw=True).invoke(x, **options)` reaches the model with the
    options (LangChain's usual `RunnableMap(raw=llm)` chain drops them), and streams {"raw": chunk} first."""
    chat = ChatLlamaCpp(model_path=smollm_path, temperature=0, max_tokens=24, seed=1)
    structured = chat.with_structured_output({"type": "object", "title": "Answer"}, include_raw=True)
    out: Any = structured.invoke("hi", max_tokens=2)
    assert out["raw"].usage_metadata["output_tokens"] == 2  # the call's max_tokens, not the field's 24
    assert out["raw"].response_metadata["finish_reason"] == "length"
    pieces = list(structured.stream("hi", max_tokens=3))
    assert [set(p) for p in pieces[:-1]] == [{"raw"}] * (len(pieces) - 1)
    assert sum(len(p["raw"].content) for p in pieces[:-1]) >= 1
    assert "parsed" in pieces[-1] or "parsing_error" in pieces[-1]
