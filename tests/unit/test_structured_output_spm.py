"""Structured output where the vocabulary has no tokens for the template's markers (the tiny model: an SPM
vocabulary with add_space_prefix, as TinyLlama's; its ChatML or DeepSeek-R1 markers are plain text).

llama.cpp feeds a template's grammar the generation prompt before the reply, re-tokenized on its own, and
drops a first token that starts with a space the prompt does not. Here that token ("_<") also holds the
prompt's first character, so the grammar, which starts with the whole prompt, refused the rest and the call
failed with "invalid grammar: std::exception". The engine now gives llama.cpp the grammar without the
characters its prefill drops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp
from tests.tiny_model import write_tiny_model

TEMPLATES = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"


class Answer(BaseModel):
    city: str


@pytest.fixture(scope="module")
def r1_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    r1 = (TEMPLATES / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    return str(write_tiny_model(tmp_path_factory.mktemp("r1") / "r1.gguf", chat_template=r1))


def test_a_schema_holds_the_reply_under_chatml(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, max_tokens=24, temperature=0)
    out: Any = chat.with_structured_output(Answer, include_raw=True).invoke("Where?")
    assert out["raw"].content.lstrip().startswith("{")
    assert '"city"' in out["raw"].content  # the grammar's first key, which random weights would not write


def test_a_schema_that_allows_one_reply_gets_it(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, max_tokens=16, temperature=0)
    empty = {"title": "Empty", "type": "object", "properties": {}, "additionalProperties": False}
    assert chat.with_structured_output(empty).invoke("Where?") == {}


def test_thinking_then_the_schema_with_a_budget(r1_model: str) -> None:
    """DeepSeek-R1's template opens the thinking block in the prompt; the budget closes it, then the grammar
    holds the answer (issue 23's tiny-model case)."""
    budget = 8
    chat = ChatLlamaCpp(model_path=r1_model, max_tokens=40, temperature=0, reasoning=True, reasoning_budget=budget)
    out: Any = chat.with_structured_output(Answer, include_raw=True).invoke("Where?")
    raw = out["raw"]
    assert raw.content.startswith('{"city":')
    assert raw.additional_kwargs["reasoning_content"].strip()
    assert raw.usage_metadata["output_token_details"]["reasoning"] > budget  # the budget, then the closing tag
