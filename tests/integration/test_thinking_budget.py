"""Structured output from a model that thinks first, and a thinking budget (llama.cpp's reasoning-budget
sampler), on real generation.

No reasoning model ships in a registry package, so a stand-in thinks under DeepSeek-R1-Distill-Qwen's chat
template, which opens the thinking block itself (the prompt ends in ``<think>\\n``) and leaves it to the model
to close: Qwen2.5-Coder-0.5B, which never writes ``</think>`` on its own, so only the budget brings an
answer. Qwen3's template (the model opens the block) checks `reasoning=False`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp

TEMPLATES = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"
R1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
QWEN3 = (TEMPLATES / "Qwen-Qwen3-0.6B.jinja").read_text()
QUESTION = "A train covers 120 km in 1.5 hours. What is its average speed in km/h?"


class Speed(BaseModel):
    value: float
    unit: str


def _reasoning_tokens(message: Any) -> int:
    assert isinstance(message, AIMessage) and message.usage_metadata is not None
    return int(message.usage_metadata["output_token_details"]["reasoning"])


def _chat(model_path: str, template: str, **kwargs: Any) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=model_path, chat_template=template, temperature=0, verbose=False, **kwargs)


def _closing_tokens(chat: ChatLlamaCpp) -> int:
    """The tokens the budget writes: the end tag as the template writes it."""
    return len(chat.native_model.tokenize("\n</think>\n\n", add_special=False, parse_special=True))


def test_only_the_budget_closes_the_thinking(qwen_path: str) -> None:
    chat = _chat(qwen_path, R1, max_tokens=40)
    endless = chat.invoke(QUESTION, reasoning=True)
    # Without a budget the model thinks until max_tokens: no answer, every token thinking.
    assert endless.content == "" and endless.additional_kwargs["reasoning_content"].strip()
    assert endless.response_metadata["finish_reason"] == "length"
    assert _reasoning_tokens(endless) == endless.usage_metadata["output_tokens"]  # type: ignore[index]

    budget = 16
    answered = chat.invoke(QUESTION, reasoning=True, reasoning_budget=budget)
    thinking = answered.additional_kwargs["reasoning_content"]
    assert isinstance(answered.content, str) and answered.content.strip()
    assert "think>" not in answered.content and "think>" not in thinking
    # The budget's tokens, then the end tag it writes.
    assert _reasoning_tokens(answered) == budget + _closing_tokens(chat)
    assert endless.additional_kwargs["reasoning_content"].strip().startswith(thinking.strip())  # the same, cut
    # Streaming gives the same reply, thinking first.
    chunks = list(chat.stream(QUESTION, reasoning=True, reasoning_budget=budget))
    total = chunks[0]
    for chunk in chunks[1:]:
        total += chunk
    assert total.content == answered.content
    assert total.additional_kwargs["reasoning_content"] == thinking
    assert _reasoning_tokens(total) == _reasoning_tokens(answered)


def test_the_budget_is_a_field_and_zero_closes_at_once(qwen_path: str) -> None:
    chat = _chat(qwen_path, R1, max_tokens=32, reasoning=True, reasoning_budget=0)
    message = chat.invoke(QUESTION)
    assert message.additional_kwargs.get("reasoning_content", "").strip() == ""
    assert isinstance(message.content, str) and message.content.strip()
    assert _reasoning_tokens(message) == _closing_tokens(chat)


def test_structured_output_after_thinking(qwen_path: str) -> None:
    chat = _chat(qwen_path, R1, max_tokens=160, reasoning_budget=24)
    result = chat.with_structured_output(Speed, include_raw=True).invoke(QUESTION)
    assert isinstance(result["parsed"], Speed) and result["parsing_error"] is None
    raw = result["raw"]
    # The thinking came first, unconstrained, and the grammar held the answer after it.
    assert raw.additional_kwargs["reasoning_content"].strip()
    assert Speed.model_validate_json(raw.content) == result["parsed"]
    assert 0 < _reasoning_tokens(raw) < raw.usage_metadata["output_tokens"]


def test_structured_output_without_thinking(qwen_path: str) -> None:
    for template in (R1, QWEN3):  # both templates can turn thinking off (enable_thinking)
        # Per call: the include_raw chain passes a call's options on to the model.
        chat = _chat(qwen_path, template, max_tokens=48)
        result = chat.with_structured_output(Speed, include_raw=True).invoke(QUESTION, reasoning=False)
        assert isinstance(result["parsed"], Speed)
        assert "reasoning_content" not in result["raw"].additional_kwargs
        assert _reasoning_tokens(result["raw"]) == 0


def test_a_template_without_thinking_ignores_the_budget_with_a_warning(qwen_path: str) -> None:
    chat = ChatLlamaCpp(model_path=qwen_path, temperature=0, max_tokens=8, verbose=False)
    with pytest.warns(UserWarning, match="reasoning_budget has no effect"):
        message = chat.invoke(QUESTION, reasoning_budget=4)
    assert message.content == chat.invoke(QUESTION).content
    assert message.usage_metadata is not None and "output_token_details" not in message.usage_metadata
