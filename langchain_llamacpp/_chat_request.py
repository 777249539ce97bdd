"""One chat call, described before anything runs: the pure step from messages and options to what the
chat template is rendered with and how the reply is to be read (as ChatOllama's `_chat_params`).

`chat_request` needs no model, no engine and no template worker, so each of its rules (the tool choice,
what cannot be combined, reasoning) is tested alone (tests/unit/test_chat_request.py). The steps that
need the engine follow it: `ChatLlamaCpp._prepare` renders `ChatRequest.render` in the template
worker, and `request_params` tokenizes the prompt and builds the native request from the render.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import BaseMessage

import langchain_llamacpp._native as _native
import langchain_llamacpp._request as _request
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._messages import (
    MediaFiles,
    convert_messages_to_llamacpp,
    force_tool_call_grammar,
    normalize_tool_choice,
)
from langchain_llamacpp._templates import RenderInputs
from langchain_llamacpp._text import json_text
from langchain_llamacpp._tool_calls import ToolCallRules

# Keyword arguments of a chat call that shape the prompt rather than sampling.
CHAT_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls", "json_schema", "reasoning", "tool_call_recovery")


@dataclass(frozen=True)
class ChatRequest:
    """A chat call as the template worker and the reply's reader need it."""

    render: RenderInputs
    media: list[bytes]  # the images and audio, in the order of their markers in the messages
    tools: list[dict[str, Any]]  # the tools offered (only the forced one where one is forced)
    tool_choice: str  # "auto", "required" or "none"
    grammar: str | None  # the caller's own grammar (never with tools or a schema)
    reasoning: bool | None

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the reply is read for tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    def tool_call_rules(self, recover: bool) -> ToolCallRules:
        """Which tool calls the reply may make, and whether calls written as JSON text count (`_tool_calls`)."""
        return ToolCallRules.for_request(self.tools, self.tool_choice, recover)


def chat_request(
    messages: list[BaseMessage],
    chat_options: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    reasoning: bool | None,
    enable_thinking: bool,
    media_marker: str | None,
) -> ChatRequest:
    """The request for `messages`, from the call's chat options (`CHAT_OPTIONS`), its other options
    (`_request.call_options`: the grammar) and the instance's `reasoning` and `enable_thinking`.

    `media_marker` is the projector's marker that stands for an image or audio in the text (None:
    the model takes none). A ValueError names what cannot be done.
    """
    tools, choice = _offered_tools(chat_options.get("tools") or [], chat_options.get("tool_choice"))
    json_schema = chat_options.get("json_schema")
    grammar = _settings.grammar_text(options.get("grammar"), options.get("grammar_path"))
    calls_tools = bool(tools) and choice != "none"
    if json_schema is not None and calls_tools:
        raise ValueError("structured output (json_schema) cannot be combined with bound tools")
    if grammar and (calls_tools or json_schema is not None):
        raise ValueError("a custom grammar cannot be combined with tools or structured output")
    reasoning = _reasoning(chat_options.get("reasoning", reasoning))
    media = MediaFiles(media_marker)
    render = RenderInputs(
        messages_json=json_text(convert_messages_to_llamacpp(messages, media), "messages"),
        tools_json=json_text(tools, "tools") if tools else "",
        tool_choice=choice,
        parallel_tool_calls=bool(chat_options.get("parallel_tool_calls", False)),
        json_schema=json_text(json_schema, "json_schema") if json_schema is not None else "",
        enable_thinking=enable_thinking and reasoning is not False,
        # None leaves thinking in the text; False still lets llama.cpp strip the empty thinking block
        # that templates put in the prompt when thinking is off.
        reasoning_format="none" if reasoning is None else "auto",
    )
    return ChatRequest(render, media.files, tools, choice, grammar, reasoning)


def _offered_tools(tools: list[dict[str, Any]], tool_choice: Any) -> tuple[list[dict[str, Any]], str]:
    """The tools to show the model and the choice it has; a forced tool is the only one shown."""
    if not tools:
        return [], "auto"
    choice, forced = normalize_tool_choice(tool_choice, [t["function"]["name"] for t in tools])
    if forced is not None:
        tools = [t for t in tools if t["function"]["name"] == forced]
    return tools, choice


def _reasoning(value: Any) -> bool | None:
    if value not in (True, False, None):
        raise ValueError(f"reasoning must be True, False or None, not {value!r}")
    return bool(value) if value is not None else None


# -- the steps after rendering, which need the engine --------------------------------------------------


def request_params(
    engine: _native.Engine,
    request: ChatRequest,
    rendered: _native.RenderResult,
    stop: list[str],
    options: dict[str, Any],
) -> _native.RequestParams:
    """The native request: the rendered prompt tokenized (with its media), the stop strings (`stop`,
    then the template's own), and the grammar: the template's for tool calls, or the caller's."""
    prompt = rendered.prompt
    media_prompt = engine.tokenize_media(prompt, request.media) if request.media else None
    tokens = (
        media_prompt.tokens
        if media_prompt is not None
        else engine.model.tokenize(prompt, add_special=True, parse_special=True)
    )
    stops = stop + [s for s in rendered.additional_stops if s not in stop]
    template_grammar = rendered.grammar
    if template_grammar and request.tool_choice == "required":
        template_grammar = force_tool_call_grammar(template_grammar)
    grammar = {"grammar": template_grammar or request.grammar, "grammar_path": None}
    params = _request.request_params(tokens, stops, {**options, **grammar})
    params.media = media_prompt
    sampling = params.sampling
    if template_grammar:
        sampling.grammar_is_tool_call = True
        sampling.grammar_lazy = rendered.grammar_lazy
        sampling.grammar_triggers = rendered.grammar_triggers
        sampling.generation_prompt = rendered.generation_prompt
    sampling.preserved_tokens = rendered.preserved_tokens
    return params


def reply_parser(request: ChatRequest, rendered: _native.RenderResult) -> tuple[_native.ChatParser, bool]:
    """llama.cpp's chat parser for the template's format, and whether the reply needs it at all
    (tool calls, thinking, or a format other than plain content)."""
    parser = _native.ChatParser(
        rendered.format,
        rendered.parser,
        rendered.generation_prompt,
        request.parses_tool_calls,
        request.render.reasoning_format,
    )
    needed = request.parses_tool_calls or rendered.supports_thinking or rendered.format != 0
    return parser, needed
