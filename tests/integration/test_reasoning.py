"""`reasoning` with ChatOllama's meaning, through llama.cpp's chat parser for the model's own template.

No reasoning model ships in a registry package, so the real Qwen2.5-Coder-0.5B runs under Qwen3's chat
template (the same ChatML and tool-call format) and a grammar makes it think first: the tokens are
real model output, parsed as a Qwen3 answer would be.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import AIMessageChunk

from langchain_llamacpp import ChatLlamaCpp

TEMPLATES = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"
QWEN3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
THINK_THEN_ANSWER = r"""root ::= "<think>\n" sentence "\n</think>\n\n" sentence
sentence ::= word (" " word){3,12} "."
word ::= [a-zA-Z0-9+]{1,12}"""
QUESTION = "What is 2+2? Think first."


def _chat(qwen_path: str, **kwargs: object) -> ChatLlamaCpp:
    return ChatLlamaCpp(
        model_path=qwen_path, chat_template=QWEN3, temperature=0, max_tokens=80, verbose=False, **kwargs
    )


def test_reasoning_true_separates_thinking(qwen_path: str) -> None:
    message = _chat(qwen_path, reasoning=True, grammar=THINK_THEN_ANSWER).invoke(QUESTION)
    thinking = message.additional_kwargs["reasoning_content"]
    assert thinking.strip() and "<think>" not in thinking and "</think>" not in thinking
    assert isinstance(message.content, str) and message.content.strip().endswith(".")
    assert "think>" not in message.content
    blocks = message.content_blocks
    assert [b["type"] for b in blocks] == ["reasoning", "text"]
    assert blocks[0].get("reasoning") == thinking and blocks[1].get("text") == message.content


def test_reasoning_streams_chunk_by_chunk(qwen_path: str) -> None:
    chat = _chat(qwen_path, reasoning=True, grammar=THINK_THEN_ANSWER)
    whole = chat.invoke(QUESTION)
    chunks = list(chat.stream(QUESTION))
    thinking_chunks = [c for c in chunks if c.additional_kwargs.get("reasoning_content")]
    assert len(thinking_chunks) > 3  # as the tokens come, not in one piece at the end
    # Every chunk of thinking comes before the first chunk of the answer, and no tag leaks.
    first_text = next(i for i, c in enumerate(chunks) if c.content)
    assert all(chunks.index(c) < first_text for c in thinking_chunks)
    assert not any("think>" in str(c.content) for c in chunks)
    total = chunks[0]
    for c in chunks[1:]:
        total = total + c
    assert total.additional_kwargs["reasoning_content"] == whole.additional_kwargs["reasoning_content"]
    assert total.content == whole.content


def test_reasoning_none_leaves_thinking_in_the_text(qwen_path: str) -> None:
    message = _chat(qwen_path, grammar=THINK_THEN_ANSWER).invoke(QUESTION)
    assert "reasoning_content" not in message.additional_kwargs
    assert isinstance(message.content, str) and message.content.startswith("<think>\n")
    assert "</think>" in message.content


def test_reasoning_false_turns_thinking_off(qwen_path: str) -> None:
    on = _chat(qwen_path, reasoning=True, grammar=THINK_THEN_ANSWER).invoke(QUESTION)
    off = _chat(qwen_path, reasoning=False).invoke(QUESTION)
    # Qwen3's template closes an empty thinking block in the prompt when thinking is off.
    assert off.usage_metadata is not None and on.usage_metadata is not None
    assert off.usage_metadata["input_tokens"] > on.usage_metadata["input_tokens"]
    assert "reasoning_content" not in off.additional_kwargs
    assert isinstance(off.content, str) and off.content.strip() and "think>" not in off.content
    # Per call, as ChatOllama allows.
    assert _chat(qwen_path).invoke(QUESTION, reasoning=False).content == off.content


def test_output_version_v1_gives_standard_blocks(qwen_path: str) -> None:
    chat = _chat(qwen_path, reasoning=True, grammar=THINK_THEN_ANSWER, output_version="v1")
    content = chat.invoke(QUESTION).content
    assert isinstance(content, list)
    assert [b["type"] for b in content if isinstance(b, dict)] == ["reasoning", "text"]
    streamed = [c.content for c in chat.stream(QUESTION)]
    assert any(isinstance(c, list) and c and c[0].get("type") == "reasoning" for c in streamed)


def test_invalid_reasoning_value(qwen_path: str) -> None:
    with pytest.raises(ValueError, match="reasoning must be True, False or None"):
        _chat(qwen_path).invoke(QUESTION, reasoning="high")


def test_tool_call_after_thinking_while_streaming(qwen_path: str) -> None:
    """llama.cpp's parser for Qwen3's template, fed a thinking-then-tool-call answer token by token."""
    chat = _chat(qwen_path, reasoning=True)
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    call = chat._prepare(chat._convert_input(QUESTION).to_messages(), None, {"tools": [tool], "reasoning": True})
    answer = (
        "<think>\nThe user wants the weather, so I call the tool.\n</think>\n\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    )
    model = chat.native_model
    tokens = model.tokenize(answer, add_special=False, parse_special=True)
    stream = call.stream
    pieces: list[AIMessageChunk] = []
    for n in range(1, len(tokens) + 1):
        delta = stream.delta(model.detokenize(tokens[:n], True), partial=True)
        if delta is not None:
            pieces.append(delta)
    last = stream.delta(answer, partial=False)
    if last is not None:
        pieces.append(last)
    thinking = "".join(p.additional_kwargs.get("reasoning_content", "") for p in pieces)
    assert thinking.strip() == "The user wants the weather, so I call the tool."
    assert sum(bool(p.additional_kwargs.get("reasoning_content")) for p in pieces) > 3
    assert "".join(str(p.content) for p in pieces).strip() == ""
    calls = [c for p in pieces for c in p.tool_call_chunks]
    assert calls[0]["name"] == "get_weather"
    assert json.loads("".join(c["args"] or "" for c in calls)) == {"city": "Paris"}
