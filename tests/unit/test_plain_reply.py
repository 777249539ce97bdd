"""Replies that need no parse at each token (`_chat_request.plain_content`): for every chat template that
llama.cpp ships, where the check says the reply is plain content, llama.cpp's own parser for that template
must give back any text unchanged, partial or whole; and replies of templates with thinking are parsed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from langchain_core.messages import HumanMessage

import langchain_llamacpp._native as _native
from langchain_llamacpp import ChatLlamaCpp
from langchain_llamacpp._chat_request import chat_request, plain_content, reply_parser

TEMPLATES = sorted((Path(__file__).parents[2] / "vendor/llama.cpp/models/templates").glob("*.jinja"))
# Texts a parser that does anything but copy would change: tags of other templates, JSON that looks like a
# call, whitespace at either end, markers of thinking, and text that is not ASCII.
TEXTS = [
    "Hello!",
    "  leading and trailing spaces  \n\n",
    '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>',
    "<think>hmm</think>answer",
    "<|im_end|> after an end marker",
    "[TOOL_CALLS] not a call",
    "Grüße, 世界 🌍",
    "",
]


Judged = dict[str, tuple[_native.RenderResult, _native.ChatParser, bool]]


def _rendered(tiny_model_path: str, template: str) -> tuple[_native.RenderResult, _native.ChatParser, bool]:
    chat = ChatLlamaCpp(model_path=tiny_model_path, chat_template=template, verbose=False)
    request = chat_request(
        [HumanMessage("hi")],
        {},
        {"grammar": None, "grammar_path": None},
        reasoning=None,
        enable_thinking=True,
        media_marker=None,
        reasoning_budget=None,
    )
    try:
        rendered = chat._chat_templates().apply(request.render)
    finally:
        chat._chat_templates().close()
    parser, needed = reply_parser(request, rendered)
    return rendered, parser, needed


@pytest.fixture(scope="module")
def judged(tiny_model_path: str) -> Judged:
    out = {}
    for path in TEMPLATES:
        try:
            out[path.stem] = _rendered(tiny_model_path, path.read_text())
        except ValueError:
            continue  # a template this tiny vocabulary cannot render (it needs a model's own tokens)
    return out


def test_plain_replies_are_what_the_parser_reads(judged: Judged) -> None:
    plain = [name for name, (_, _, needed) in judged.items() if not needed]
    assert len(plain) >= 5, f"only {plain} judged plain: the check lost its use"
    for name in plain:
        _, parser, _ = judged[name]
        for text in TEXTS:
            for partial in (True, False):
                message = json.loads(parser.parse(text, partial))
                assert (message.get("content") or "") == text, (name, text, partial)
                assert not message.get("tool_calls") and not message.get("reasoning_content"), (name, text)


def test_thinking_templates_are_parsed(judged: Judged) -> None:
    thinking = [name for name, (rendered, _, _) in judged.items() if rendered.supports_thinking]
    assert thinking, "no template with thinking rendered"
    for name in thinking:
        assert judged[name][2], name


@pytest.mark.parametrize(
    "parser",
    [
        '{"parsers":[{"type":"until","delimiters":["<|im_end|>"]},{"type":"tag","child":0,"tag":"content"}],"root":1}',
        '{"parsers":[{"type":"tag","child":0,"tag":"reasoning"},{"type":"end"}],"root":0}',
        '{"parsers":[{"type":"ref","name":"x"}],"rules":{"x":0},"root":0}',
        '{"parsers":[{"type":"literal","literal":"<think>"}],"root":0}',
        "not json",
        "",
    ],
)
def test_anything_else_is_parsed(parser: str) -> None:
    assert not plain_content(1, parser, "<|im_start|>assistant\n")
