"""Tools with a response schema (`_tool_calls.call_or_answer_grammar`), a structured answer's fence, and the
count of thinking tokens (`_chat_stream.Thinking`). The grammars are llama.cpp's own, for every template it
ships; no generation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import langchain_llamacpp._native as native
from langchain_llamacpp import LlamaCpp
from langchain_llamacpp._chat_stream import Thinking
from langchain_llamacpp._messages import force_tool_call_grammar
from langchain_llamacpp._tool_calls import ToolCallRules, _renamed, call_or_answer_grammar

TEMPLATES = sorted((Path(__file__).resolve().parents[2] / "vendor/llama.cpp/models/templates").glob("*.jinja"))
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "degrees": {"type": "integer"}},
    "required": ["city", "degrees"],
}


def test_renaming_touches_rule_names_only() -> None:
    grammar = 'root ::= "say \\" root" [^"\\]a-z] item{2,3} # root in a comment\nitem ::= [0-9] | "item"'
    assert _renamed(grammar, "p-") == (
        'p-root ::= "say \\" root" [^"\\]a-z] p-item{2,3} # root in a comment\np-item ::= [0-9] | "item"'
    )
    with pytest.raises(ValueError, match="unterminated"):
        _renamed('root ::= "open', "p-")


def test_every_template_gives_one_valid_grammar_for_a_call_or_an_answer(tiny_model_path: str) -> None:
    model = LlamaCpp(model_path=tiny_model_path, verbose=False).load().model
    messages = json.dumps([{"role": "user", "content": "Weather in Paris?"}])
    checked = 0
    for path in TEMPLATES:
        try:
            templates = native.ChatTemplates(model, path.read_text())
            calls = templates.apply(messages, tools_json=json.dumps([TOOL]), tool_choice="required").grammar
            answer = templates.apply(messages, json_schema=json.dumps(SCHEMA)).grammar
        except ValueError:
            continue  # a template llama.cpp cannot load or render: test_real_templates covers those
        if calls and answer:
            grammar = call_or_answer_grammar(force_tool_call_grammar(calls), answer)
            assert native.grammar_error(model, grammar) == "", path.name
            checked += 1
    assert checked > 50


def test_a_structured_answer_is_its_json_without_the_fence() -> None:
    rules = ToolCallRules.for_request([TOOL], "auto", recover=True, structured=True)
    answer = '{"city": "Paris", "degrees": 21}'
    for reply in (answer, f"```json\n{answer}\n```", f"\n```\n{answer}```\n"):
        decision = rules.decide(reply, [])
        assert decision.content == answer and decision.tool_calls == [] and not decision.recovered
        # Streaming shows only what the final content keeps.
        for n in range(len(reply) + 1):
            assert answer.startswith(rules.shown(reply[:n])), reply[:n]
    # A call made in the template's format stays a call; JSON naming a tool is the answer, not a call.
    call = {"id": "", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    assert rules.decide("", [call]).tool_calls == [call]
    named = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert rules.decide(named, []).tool_calls == []


QWEN3 = {"thinking_start_tag": "<think>", "thinking_end_tags": ["</think>"], "generation_prompt": "assistant\n"}
R1 = {**QWEN3, "generation_prompt": "<\uff5cAssistant\uff5c><think>\n"}  # DeepSeek-R1's full-width bars


def _rendered(fields: dict[str, object]) -> native.RenderResult:
    rendered = native.RenderResult()
    for name, value in fields.items():
        setattr(rendered, name, value)
    return rendered


def _ends(tokens: list[str]) -> list[int]:
    ends, length = [], 0
    for token in tokens:
        length += len(token)
        ends.append(length)
    return ends


@pytest.mark.parametrize(
    ("rendered", "tokens", "thinking"),
    [
        (QWEN3, ["<think>", "\n", "Hmm", ".", "\n", "</think>", "\n\n", "Four", "."], 6),
        (QWEN3, ["Four", "."], 0),  # no thinking
        (QWEN3, ["<think>", "Hmm", " and", " more"], 4),  # never closed
        (R1, ["Hmm", ".", "</", "think", ">", "\n\n", "Four"], 5),  # the prompt opened the block
        (R1, ["Hmm", ".", "", "</think>", "Four"], 4),  # a token whose text came later counts where it stands
    ],
)
def test_thinking_tokens(rendered: dict[str, object], tokens: list[str], thinking: int) -> None:
    block = Thinking.of(_rendered(rendered))
    assert block is not None and block.opened == (rendered is R1)
    assert block.tokens("".join(tokens), _ends(tokens)) == thinking


def test_no_thinking_block_without_both_tags() -> None:
    assert Thinking.of(_rendered({**QWEN3, "thinking_end_tags": []})) is None
    assert Thinking.of(_rendered({**QWEN3, "thinking_start_tag": ""})) is None
    # A block the prompt closed again (thinking turned off) is not open.
    closed = Thinking.of(_rendered({**QWEN3, "generation_prompt": "assistant\n<think>\n\n</think>\n\n"}))
    assert closed is not None and not closed.opened
