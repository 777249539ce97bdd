"""One chat call, described before anything runs: the pure step from messages and options to what the
chat template is rendered with and how the reply is to be read (as ChatOllama's `_chat_params`).

`chat_request` needs no model, no engine and no template worker, so each of its rules (the tool choice,
what cannot be combined, reasoning) is tested alone (tests/unit/test_chat_request.py). The steps that
need the engine follow it: `ChatLlamaCpp._prepare` renders `ChatRequest.render` in the template
worker, and `request_params` tokenizes the prompt and builds the native request from the render.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
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
from langchain_llamacpp._tool_calls import ToolCallRules, call_or_answer_grammar

# Keyword arguments of a chat call that shape the prompt rather than sampling.
CHAT_OPTIONS = (
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "json_schema",
    "response_format",
    "reasoning",
    "reasoning_budget",
    "tool_call_recovery",
)


@dataclass(frozen=True)
class ChatRequest:
    """A chat call as the template worker and the reply's reader need it."""

    render: RenderInputs
    media: list[bytes]  # the images and audio, in the order of their markers in the messages
    tools: list[dict[str, Any]]  # the tools offered (only the forced one where one is forced)
    tool_choice: str  # "auto", "required" or "none"
    grammar: str | None  # the caller's own grammar (never with tools or a schema)
    reasoning: bool | None
    reasoning_budget: int | None = None  # tokens of thinking at most
    structured: bool = False  # the answer is held to a JSON schema
    # With tools the model may call: the schema of its answer when it calls none (rendered apart, see `render`).
    answer_schema: str = ""

    @property
    def parses_tool_calls(self) -> bool:
        """Whether the reply is read for tool calls."""
        return bool(self.tools) and self.tool_choice != "none"

    def tool_call_rules(self, recover: bool) -> ToolCallRules:
        """Which tool calls the reply may make, and whether calls written as JSON text count (`_tool_calls`)."""
        return ToolCallRules.for_request(self.tools, self.tool_choice, recover, structured=self.structured)


def chat_request(
    messages: list[BaseMessage],
    chat_options: Mapping[str, Any],
    options: Mapping[str, Any],
    *,
    reasoning: bool | None,
    enable_thinking: bool,
    media_marker: str | None,
    reasoning_budget: int | None = None,
) -> ChatRequest:
    """The request for `messages`, from the call's chat options (`CHAT_OPTIONS`), its other options
    (`_request.call_options`: the grammar) and the instance's `reasoning`, `enable_thinking` and
    `reasoning_budget`.

    `media_marker` is the projector's marker that stands for an image or audio in the text (None:
    the model takes none). A ValueError names what cannot be done.
    """
    tools, choice = _offered_tools(chat_options.get("tools") or [], chat_options.get("tool_choice"))
    json_schema = _answer_schema(chat_options.get("json_schema"), chat_options.get("response_format"))
    grammar = _settings.grammar_text(options.get("grammar"), options.get("grammar_path"))
    calls_tools = bool(tools) and choice != "none"
    if choice == "required":
        json_schema = None  # a call is forced: there is no answer to shape
    if grammar and (calls_tools or json_schema is not None):
        raise ValueError("a custom grammar cannot be combined with tools or structured output")
    reasoning = _reasoning(chat_options.get("reasoning", reasoning))
    # The answer held to a schema is the content alone: the thinking before it is always separated.
    parse_thinking = reasoning is not None or json_schema is not None
    # A schema beside tools the model may call: rendered with the tools, the schema's grammar added (`render`).
    answer_schema = json_text(json_schema, "json_schema") if json_schema is not None and calls_tools else ""
    media = MediaFiles(media_marker)
    render = RenderInputs(
        messages_json=json_text(convert_messages_to_llamacpp(messages, media), "messages"),
        tools_json=json_text(tools, "tools") if tools else "",
        tool_choice=choice,
        parallel_tool_calls=bool(chat_options.get("parallel_tool_calls", False)),
        json_schema=json_text(json_schema, "json_schema") if json_schema is not None and not answer_schema else "",
        enable_thinking=enable_thinking and reasoning is not False,
        # "none" leaves the thinking in the text; with reasoning=False, "auto" still lets llama.cpp strip
        # the empty thinking block that templates put in the prompt when thinking is off.
        reasoning_format="auto" if parse_thinking else "none",
    )
    budget = _reasoning_budget(chat_options.get("reasoning_budget", reasoning_budget))
    return ChatRequest(
        render, media.files, tools, choice, grammar, reasoning, budget, json_schema is not None, answer_schema
    )


def _answer_schema(json_schema: Any, response_format: Any) -> Any:
    """The schema of the answer: `json_schema`, or OpenAI's `response_format` (``{"type": "json_schema",
    "json_schema": {"schema": ...}}``, ``{"type": "json_object"}`` or ``{"type": "text"}``), as LangChain's
    agents bind it; None for free text."""
    if response_format is None:
        return json_schema
    if json_schema is not None:
        raise ValueError("give either json_schema or response_format, not both")
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    spec = response_format.get("json_schema") if kind == "json_schema" else None
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema"), Mapping):
        raise ValueError(
            f"unsupported response_format {response_format!r}: use {{'type': 'json_schema', 'json_schema': "
            "{'name': ..., 'schema': {...}}}, {'type': 'json_object'} or {'type': 'text'}"
        )
    return dict(spec["schema"])


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


def _reasoning_budget(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError(f"reasoning_budget must be a number of tokens (0 or more) or None, not {value!r}")
    return value


def render(request: ChatRequest, apply: Callable[[RenderInputs], _native.RenderResult]) -> _native.RenderResult:
    """The rendered request (`apply`: a template worker's). A schema beside tools takes three renders,
    since llama.cpp's chat code drops the tools where it is given a schema: the prompt and the reply's
    parser with the tools, the grammar of a call (its "required" one), and the grammar of the answer
    (`_tool_calls.call_or_answer_grammar` joins the two)."""
    rendered = apply(request.render)
    if request.answer_schema:
        calls = apply(replace(request.render, tool_choice="required"))
        answer = apply(replace(request.render, tools_json="", tool_choice="auto", json_schema=request.answer_schema))
        rendered.grammar = call_or_answer_grammar(force_tool_call_grammar(calls.grammar), answer.grammar)
        rendered.grammar_lazy = False
        rendered.grammar_triggers = []
    return rendered


# -- the steps after rendering, which need the engine --------------------------------------------------


def request_params(
    engine: _native.Engine,
    request: ChatRequest,
    rendered: _native.RenderResult,
    stop: list[str],
    options: dict[str, Any],
) -> _native.RequestParams:
    """The native request: the rendered prompt tokenized (with its media), the stop strings (`stop`,
    then the template's own), the grammar (the template's, for tool calls or a schema, or the caller's) and
    the thinking: the template's tags and the budget."""
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
    _thinking(sampling, request, rendered)
    return params


def _thinking(sampling: _native.SamplingParams, request: ChatRequest, rendered: _native.RenderResult) -> None:
    """The template's thinking tags (llama.cpp's reasoning-budget sampler watches them, as llama-server
    has it do) and the budget, where one is given and there is a thinking block to bound."""
    if not (rendered.thinking_start_tag and rendered.thinking_end_tags):
        return
    tags = list(rendered.thinking_end_tags)
    sampling.reasoning_start = rendered.thinking_start_tag
    # The first is what the budget writes: the end tag as thinking templates write it (Qwen3's, DeepSeek-R1's:
    # "\n</think>\n\n"). The bare tag alone, cut into a sentence, leaves a small model writing tags on: with
    # Qwen2.5-0.5B under DeepSeek-R1's template it went on with "><think>" to max_tokens, and answered after this.
    sampling.reasoning_end = [f"\n{tags[0]}\n\n", *tags]
    if request.reasoning_budget is not None and request.reasoning is not False:
        sampling.reasoning_budget = request.reasoning_budget


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
    needed = request.parses_tool_calls or rendered.supports_thinking
    return parser, needed or not plain_content(rendered.format, rendered.parser, rendered.generation_prompt)


# The nodes of a PEG parser that reads the whole reply as content: the generation prompt, then content to the end.
_PLAIN_NODES = frozenset({"epsilon", "end", "until", "tag", "sequence", "literal"})


@functools.lru_cache(maxsize=64)
def plain_content(chat_format: int, parser: str, generation_prompt: str) -> bool:
    """Whether llama.cpp's parser of this format reads any reply as its text, unchanged: the plain format,
    or a PEG parser with no tag but content, read to the end (no delimiter) after the generation prompt.
    Such a reply needs no parse at each token (llama.cpp's templates without tools or thinking, ChatML's)."""
    if chat_format == 0:
        return True
    try:
        tree = json.loads(parser) if parser else None
    except ValueError:
        return False
    if not isinstance(tree, dict) or tree.get("rules") or not isinstance(tree.get("parsers"), list):
        return False
    return all(_plain_node(node, generation_prompt) for node in tree["parsers"])


def _plain_node(node: Any, generation_prompt: str) -> bool:
    if not isinstance(node, dict) or node.get("type") not in _PLAIN_NODES:
        return False
    kind = node["type"]
    if kind == "tag":
        return node.get("tag") == "content"
    if kind == "until":
        return not node.get("delimiters")
    if kind == "literal":
        return node.get("literal") in ("", generation_prompt)
    return True
