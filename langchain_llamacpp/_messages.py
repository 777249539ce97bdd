"""Conversion between LangChain messages/tools and the OpenAI-style JSON that llama.cpp's chat
code reads and writes."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    InvalidToolCall,
    SystemMessage,
    ToolCall,
    ToolMessage,
)
from langchain_core.messages.tool import invalid_tool_call, tool_call
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel

from langchain_llamacpp._media import MEDIA_BLOCK_TYPES, load_block


class MediaFiles:
    """Images and audio met while converting messages: each becomes the projector's marker in the text,
    and its bytes are collected, in order, for the engine."""

    def __init__(self, marker: str | None) -> None:
        self.marker = marker
        self.files: list[bytes] = []

    def add(self, block: dict[str, Any]) -> str:
        if self.marker is None:
            raise ValueError(
                f"a content block of type {block.get('type')!r} needs a multimodal model: pass mmproj_path= "
                "(the model's projector GGUF, e.g. mmproj-*.gguf beside it)"
            )
        self.files.append(load_block(block))
        return self.marker


def _content_text(content: str | list[Any], media: MediaFiles | None = None) -> str:
    """Text of a message's content, given as a string or as content blocks; media become markers."""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict):
            kind = block.get("type")
            if kind == "text":
                parts.append(str(block.get("text", "")))
            elif kind in ("tool_use", "tool_call", "reasoning", "thinking"):
                continue  # carried by tool_calls / not sent back to the model
            elif kind in MEDIA_BLOCK_TYPES:
                parts.append((media or MediaFiles(None)).add(block))
            else:
                raise ValueError(f"content blocks of type {kind!r} are not supported by ChatLlamaCpp")
        else:
            raise ValueError(f"unsupported content block: {block!r}")
    return "".join(parts)


def _lc_tool_call_to_openai(call: ToolCall) -> dict[str, Any]:
    return {
        "id": call.get("id") or new_call_id(),
        "type": "function",
        "function": {
            "name": call["name"],
            "arguments": json.dumps(call["args"], ensure_ascii=False),
        },
    }


def convert_messages_to_llamacpp(
    messages: Sequence[BaseMessage], media: MediaFiles | None = None
) -> list[dict[str, Any]]:
    """LangChain messages as OpenAI-style dicts for llama.cpp's chat templates (images and audio, into
    `media`, with its marker in the text where they were)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            out.append({"role": "system", "content": _content_text(message.content, media)})
        elif isinstance(message, HumanMessage):
            out.append({"role": "user", "content": _content_text(message.content, media)})
        elif isinstance(message, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _content_text(message.content, media)}
            calls = [_lc_tool_call_to_openai(c) for c in message.tool_calls]
            calls += [
                {
                    "id": c.get("id") or new_call_id(),
                    "type": "function",
                    "function": {"name": c.get("name") or "", "arguments": c.get("args") or ""},
                }
                for c in message.invalid_tool_calls
            ]
            if calls:
                entry["tool_calls"] = calls
            out.append(entry)
        elif isinstance(message, ToolMessage):
            entry = {
                "role": "tool",
                "content": _content_text(message.content, media),
                "tool_call_id": message.tool_call_id,
            }
            if message.name:
                entry["name"] = message.name
            out.append(entry)
        elif isinstance(message, ChatMessage):
            out.append({"role": message.role, "content": _content_text(message.content, media)})
        else:
            raise ValueError(f"unsupported message type {type(message).__name__}")
    return out


def convert_tools_to_openai(
    tools: Sequence[dict[str, Any] | type[BaseModel] | Callable[..., Any] | BaseTool],
) -> list[dict[str, Any]]:
    """Tools in OpenAI's function format, each with a usable name and an object schema."""
    formatted = []
    for tool in tools:
        try:
            converted = convert_to_openai_tool(tool)
        except Exception as e:
            raise ValueError(f"cannot convert tool {tool!r} to a function schema: {e}") from e
        function = converted.get("function") or {}
        name = function.get("name")
        if not name or not isinstance(name, str):
            raise ValueError(f"tool {tool!r} has no name")
        params = function.get("parameters")
        if params is None:
            function["parameters"] = {"type": "object", "properties": {}}
        elif not isinstance(params, dict) or params.get("type", "object") != "object":
            raise ValueError(f"the parameters of tool {name!r} must be a JSON schema of type object, got {params!r}")
        formatted.append(converted)
    return formatted


def normalize_tool_choice(tool_choice: Any, tool_names: list[str]) -> tuple[str, str | None]:
    """(llama.cpp's choice: "auto" | "required" | "none", the one tool forced, if any)."""
    if tool_choice is None or tool_choice is False or tool_choice == "auto":
        return "auto", None
    if tool_choice == "none":
        return "none", None
    if tool_choice in ("any", "required"):
        return "required", None
    if tool_choice is True:
        return ("required", tool_names[0]) if len(tool_names) == 1 else ("required", None)
    name: Any = None
    if isinstance(tool_choice, str):
        name = tool_choice
    elif isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"unsupported tool_choice {tool_choice!r}: use 'auto', 'any', 'required', 'none', True, "
            "a tool name or {'type': 'function', 'function': {'name': ...}}"
        )
    if name not in tool_names:
        raise ValueError(f"tool_choice names unknown tool {name!r}; bound tools: {tool_names}")
    return "required", name


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parse_tool_calls(
    raw_calls: list[dict[str, Any]],
) -> tuple[list[ToolCall], list[InvalidToolCall]]:
    """Tool calls from llama.cpp's parsed message; arguments that are not a JSON object are invalid."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in raw_calls:
        function = raw.get("function") or {}
        name = function.get("name") or ""
        arguments = function.get("arguments")
        call_id = raw.get("id") or new_call_id()
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise ValueError("arguments are not a JSON object")
            calls.append(tool_call(name=name, args=args, id=call_id))
        except (ValueError, TypeError) as e:
            invalid.append(invalid_tool_call(name=name, args=str(arguments), id=call_id, error=str(e)))
    return calls, invalid


_ROOT_PREAMBLE = re.compile(r"^(root ::= .*?)\s*until-[\w-]+\?\s*(tool-calls?\b.*)$", re.M)


def force_tool_call_grammar(grammar: str) -> str:
    """Make a tool-call grammar start with the call: llama.cpp's "required" grammar lets the
    model write free text first, and a small model may never get to the call."""
    return _ROOT_PREAMBLE.sub(r"\1 \2", grammar, count=1)
