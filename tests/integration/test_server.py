"""The OpenAI-compatible server with clients nobody here wrote: the official `openai` package (sync, async,
streaming, tools, response_format, embeddings, errors) and LangChain's `ChatOpenAI` / `OpenAIEmbeddings`,
on real models. Tool calls through the server are the calls `ChatLlamaCpp` makes in-process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp, LlamaCppEmbeddings
from langchain_llamacpp.server import HTTPSettings, OpenAIAPI, create_app
from tests.serving import API_KEY, model_settings, serving
from tests.texts import WEATHER_TOOL as WEATHER

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(smollm_path: str, qwen_path: str, nomic_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    return model_settings(smollm_path, qwen_path, nomic_path)


@pytest.fixture(scope="module")
def base_url(settings: tuple[dict[str, Any], dict[str, Any]]) -> Iterator[str]:
    api = OpenAIAPI(*settings)
    api.load()
    with serving(create_app(api, HTTPSettings(api_key=API_KEY))) as url:
        yield f"{url}/v1"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)


USER = [{"role": "user", "content": "Name three primary colors."}]


def test_openai_chat(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="smollm2", messages=USER, max_tokens=16)  # type: ignore[arg-type]
    assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage is not None and 0 < reply.usage.completion_tokens <= 16
    assert [m.id for m in client.models.list()] == ["smollm2", "qwen", "nomic"]


def _clear_cache(fields: dict[str, Any]) -> None:
    """Empty the prompt cache of the engine of `fields` (the server's: the registry shares it), so that the
    next prompt is evaluated in the same chunks as the one before it was."""
    ChatLlamaCpp(**fields).load().clear_cache()


def test_openai_streaming_adds_up_to_the_whole_reply(client: openai.OpenAI, settings: Any) -> None:
    kwargs: dict[str, Any] = {"model": "smollm2", "messages": USER, "max_tokens": 24, "seed": 1}
    _clear_cache(settings[0]["smollm2"])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    _clear_cache(settings[0]["smollm2"])
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole  # greedy, one request at a time: the same tokens
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and 0 < usage.completion_tokens <= 24


async def test_openai_async_and_n_choices(base_url: str) -> None:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    reply = await client.chat.completions.create(model="smollm2", messages=USER, max_tokens=8, n=3, temperature=1.0)  # type: ignore[arg-type]
    assert [c.index for c in reply.choices] == [0, 1, 2]
    stream = await client.chat.completions.create(model="smollm2", messages=USER, max_tokens=8, n=2, stream=True)  # type: ignore[arg-type]
    finished = {c.choices[0].index async for c in stream if c.choices and c.choices[0].finish_reason}
    assert finished == {0, 1}


def test_openai_completions_with_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=4, logprobs=2)
    choice = reply.choices[0]
    assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 4
    assert "".join(choice.logprobs.tokens or []) == choice.text
    assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs or [])


TOOL_PROMPTS = ["What is the weather in Paris?", "Is it raining in Oslo right now?"]


def test_tool_calls_are_the_ones_chatllamacpp_makes(client: openai.OpenAI, settings: Any) -> None:
    # benchmarks/server.py compares more requests; here two, each from an empty prompt cache on both sides (a
    # prompt evaluated in other chunks rounds differently, which can tip a 0.5B model's choice).
    chat = ChatLlamaCpp(**settings[0]["qwen"]).bind_tools([WEATHER], tool_choice="auto")
    for prompt in TOOL_PROMPTS:
        _clear_cache(settings[0]["qwen"])
        local = chat.invoke(prompt, max_tokens=48)
        _clear_cache(settings[0]["qwen"])
        remote = client.chat.completions.create(
            model="qwen",
            messages=[{"role": "user", "content": prompt}],
            tools=[WEATHER],  # type: ignore[list-item]
            tool_choice="auto",
            max_tokens=48,
        ).choices[0]
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in remote.message.tool_calls or []]  # type: ignore[union-attr]
        assert calls == [(c["name"], c["args"]) for c in local.tool_calls], prompt
        assert calls and remote.finish_reason == "tool_calls"
        assert (remote.message.content or "") == local.content


def test_a_forced_tool_call_streams_its_arguments(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    deltas = [c.choices[0].delta for c in stream if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].tool_calls[0].function.name == "get_weather" and deltas[0].tool_calls[0].id  # type: ignore[index,union-attr]
    arguments = "".join(d.tool_calls[0].function.arguments or "" for d in deltas)  # type: ignore[index,union-attr]
    assert isinstance(json.loads(arguments)["city"], str)


def test_response_format_json_schema_is_enforced(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
        "required": ["name", "country"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "The capital of Japan."}],
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
    )
    assert set(json.loads(reply.choices[0].message.content or "")) == {"name", "country"}


def test_openai_embeddings_equal_in_process(client: openai.OpenAI, settings: Any) -> None:
    texts = ["llama.cpp runs GGUF models.", "Paris is in France."]
    remote = client.embeddings.create(model="nomic", input=texts)  # base64, the client's default, decoded by it
    local = LlamaCppEmbeddings(**settings[1]["nomic"], document_instruction="").embed_documents(texts)
    assert [d.index for d in remote.data] == [0, 1]
    for got, want in zip(remote.data, local, strict=True):
        assert got.embedding == pytest.approx(want, abs=1e-4)
    floats = client.embeddings.create(model="nomic", input="x", encoding_format="float")
    assert len(floats.data[0].embedding) == 768 and floats.usage.prompt_tokens > 0


def test_openai_errors(base_url: str, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=USER, temperature=-1)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="smollm2", input="x")
    wrong = openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()


# -- LangChain's OpenAI classes --------------------------------------------------------------------------


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"Sunny in {city}."


class City(BaseModel):
    name: str
    country: str


def test_chatopenai(base_url: str) -> None:
    small = ChatOpenAI(model="smollm2", base_url=base_url, api_key=API_KEY, max_retries=0, max_tokens=16)  # type: ignore[arg-type]
    assert small.invoke("Say hello.").content
    assert "".join(str(c.content) for c in small.stream("Count to three.")).strip()
    llm = ChatOpenAI(model="qwen", base_url=base_url, api_key=API_KEY, max_retries=0, temperature=0, max_tokens=64)  # type: ignore[arg-type]
    calls = llm.bind_tools([get_weather]).invoke("What is the weather in Paris?").tool_calls
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"})]
    city = llm.with_structured_output(City, method="json_schema").invoke("The capital of Japan.")
    assert isinstance(city, City) and city.name


async def test_chatopenai_async_stream_usage(base_url: str) -> None:
    llm = ChatOpenAI(
        model="smollm2",
        base_url=base_url,
        api_key=API_KEY,
        max_retries=0,
        max_tokens=8,
        stream_usage=True,  # type: ignore[arg-type]
    )
    total = None
    async for chunk in llm.astream("Hello"):
        total = chunk if total is None else total + chunk
    assert total is not None and total.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] <= 8


def test_openaiembeddings(base_url: str) -> None:
    embeddings = OpenAIEmbeddings(
        model="nomic",
        base_url=base_url,
        api_key=API_KEY,
        check_embedding_ctx_length=False,
        max_retries=0,  # type: ignore[arg-type]
    )
    vectors = embeddings.embed_documents(["a cat", "a dog"])
    assert len(vectors) == 2 and len(embeddings.embed_query("a bird")) == 768
