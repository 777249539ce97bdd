"""Text that cannot reach llama.cpp: a str with a lone surrogate has no UTF-8 form. Every entry
point says which text and where, with a ValueError, before anything is submitted."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings
from langchain_llamacpp._text import json_text, valid_text

SURROGATE = "\ud800"


def _message(what: str, index: int) -> str:
    return f"^{what} contains a lone surrogate at index {index}; text must be valid Unicode$"


def test_valid_text_names_the_place() -> None:
    assert valid_text("plain ascii", "prompt") == "plain ascii"
    assert valid_text("héllo wörld 😀 中文", "prompt") == "héllo wörld 😀 中文"
    assert valid_text(None, "suffix") is None
    with pytest.raises(ValueError, match=_message("prompt", 3)):
        valid_text("a😀b" + SURROGATE + "c", "prompt")  # index in code points, as Python counts
    with pytest.raises(ValueError, match=_message("prompt", 0)):
        valid_text("\udc80abc", "prompt")  # what os.fsdecode makes of an undecodable byte


def test_json_text_names_the_field() -> None:
    assert json_text({"a": ["é"]}, "messages") == '{"a": ["é"]}'
    with pytest.raises(ValueError, match=_message(r"messages\[1\]\['content'\]", 2)):
        json_text([{"content": "ok"}, {"role": "user", "content": "ab" + SURROGATE}], "messages")
    with pytest.raises(ValueError, match=_message(r"a key in tools\[0\]", 1)):
        json_text([{"k" + SURROGATE: 1}], "tools")


def _llm(path: str, **kwargs: Any) -> LlamaCpp:
    return LlamaCpp(model_path=path, **{"temperature": 0, "max_tokens": 4, **kwargs})


def test_llm_entry_points(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    expected = llm.invoke("still works")
    cases: list[tuple[Any, str]] = [
        (lambda: llm.invoke("hi " + SURROGATE), _message("prompt", 3)),
        (lambda: llm.invoke(SURROGATE, suffix="x"), _message("prompt", 0)),
        (lambda: llm.invoke("hi", suffix="x" + SURROGATE), _message("suffix", 1)),
        (lambda: llm.invoke("hi", stop=["\n", "é" + SURROGATE]), _message(r"stop\[1\]", 1)),
        (lambda: _llm(tiny_model_path, stop=[SURROGATE]).invoke("hi"), _message(r"stop\[0\]", 0)),
        (lambda: llm.invoke("hi", grammar='root ::= "' + SURROGATE + '"'), _message("grammar", 10)),
        (lambda: list(llm.stream("hi" + SURROGATE)), _message("prompt", 2)),
        (lambda: llm.batch(["fine", "no" + SURROGATE]), _message("prompt", 2)),
        (lambda: llm.get_num_tokens(SURROGATE), _message("text", 0)),
        (lambda: llm.get_token_ids("x" + SURROGATE), _message("text", 1)),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert llm.invoke("still works") == expected  # the refused calls left nothing behind


async def test_llm_async_entry_points(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    with pytest.raises(ValueError, match=_message("prompt", 1)):
        await llm.ainvoke("a" + SURROGATE)
    with pytest.raises(ValueError, match=_message(r"stop\[0\]", 0)):
        async for _ in llm.astream("hi", stop=[SURROGATE]):
            pass


def test_chat_entry_points(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=4)
    expected = chat.invoke("still works").content
    messages = [SystemMessage("be brief"), HumanMessage("hi"), AIMessage("hello"), HumanMessage("and " + SURROGATE)]
    with pytest.raises(ValueError, match=_message(r"messages\[3\]\['content'\]", 4)):
        chat.invoke(messages)
    with pytest.raises(ValueError, match=_message(r"messages\[0\]\['content'\]", 0)):
        list(chat.stream(SURROGATE))
    with pytest.raises(ValueError, match=_message(r"stop\[0\]", 0)):
        chat.invoke("hi", stop=[SURROGATE])

    def lookup(city: str) -> str:
        """Look up a city \ud800."""
        return city

    with pytest.raises(ValueError, match=_message(r"tools\[0\]\['function'\]\['description'\]", 15)):
        chat.bind_tools([lookup]).invoke("hi")
    schema = {"title": "Answer", "type": "object", "properties": {"text": {"type": "string", "description": SURROGATE}}}
    with pytest.raises(ValueError, match=r"^json_schema\[.*contains a lone surrogate"):
        chat.with_structured_output(schema).invoke("hi")
    with pytest.raises(ValueError, match=_message("chat_template", 2)):
        ChatLlamaCpp(model_path=tiny_model_path, chat_template="{{" + SURROGATE + "}}").invoke("hi")
    with pytest.raises(ValueError, match=_message("text", 0)):
        chat.get_num_tokens(SURROGATE)
    assert chat.invoke("still works").content == expected  # the refused calls left nothing behind


async def test_chat_async_entry_point(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=4)
    with pytest.raises(ValueError, match=_message(r"messages\[0\]\['content'\]", 1)):
        await chat.ainvoke("a" + SURROGATE)


def test_embeddings_entry_points(tiny_model_path: str) -> None:
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path)
    with pytest.raises(ValueError, match=_message("text 1", 2)):
        embeddings.embed_documents(["fine", "ok" + SURROGATE])
    with pytest.raises(ValueError, match=_message("the query", 0)):
        embeddings.embed_query(SURROGATE)
    assert len(embeddings.embed_query("still works")) == 64
