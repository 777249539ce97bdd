"""The reply to one chat request, read by llama.cpp's chat parser for the model's template: content,
reasoning and tool calls, streamed as message chunks that each carry what changed since the last,
or parsed once into a message. Which tool calls the reply makes is decided by `_tool_calls`."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.messages.tool import ToolCallChunk, tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk

import langchain_llamacpp._native as _native
import langchain_llamacpp._results as _results
from langchain_llamacpp._logs import logger
from langchain_llamacpp._messages import new_call_id, parse_tool_calls
from langchain_llamacpp._tool_calls import ToolCallRules


@dataclass(frozen=True)
class Thinking:
    """A chat template's thinking block: its tags, and whether the prompt opened it (the reply starts inside)."""

    start: str
    ends: tuple[str, ...]
    opened: bool

    @classmethod
    def of(cls, rendered: _native.RenderResult) -> Thinking | None:
        """The rendered template's thinking block; None where it has none that llama.cpp knows the tags of."""
        start, ends = rendered.thinking_start_tag, tuple(t for t in rendered.thinking_end_tags if t)
        if not start or not ends:
            return None
        prompt = rendered.generation_prompt
        at = prompt.rfind(start)
        return cls(start, ends, at >= 0 and not prompt[at + len(start) :].strip())

    def tokens(self, text: str, ends: list[int]) -> int:
        """How many of the reply's tokens (the i-th ends at `ends[i]` in `text`) are thinking: from the
        start tag (the reply's start where the prompt opened the block) through the end tag, or to the
        reply's end where the block never closed."""
        if self.opened:
            begin = 0
        elif text.lstrip().startswith(self.start):
            begin = len(text) - len(text.lstrip())
        else:
            return 0
        after = begin if self.opened else begin + len(self.start)
        closes = [at + len(tag) for tag in self.ends if (at := text.find(tag, after)) >= 0]
        stop = min(closes, default=len(text))
        count, start = 0, 0
        for end in ends:
            # A token is thinking where its text lies in the block (one whose text was held back: where it stands).
            if start < stop and (end > begin or (end == start and start >= begin)):
                count += 1
            start = end
        return count


class ChatStream:
    """One reply as it is parsed: the parser, the text so far, what has been sent, and the chunks.

    Where the output needs no parsing (no tools, no reasoning, a plain template), each token's text is
    content as it comes and nothing is kept, so a token costs the same at any length of output.
    Otherwise the whole text so far is parsed again at each token, as llama.cpp's server does, and
    only the change is sent.
    """

    def __init__(
        self,
        parser: _native.ChatParser,
        *,
        parse: bool,
        tools: ToolCallRules | None,
        logprobs: bool,
        model_name: str,
        speculative: bool,
        thinking: Thinking | None = None,
    ) -> None:
        self._parser = parser
        self._thinking = thinking
        self._ends: list[int] = []  # where each token's text ends in `text` (where reasoning tokens are counted)
        self._needs_parse = parse
        # What the reply may call, and whether a call written as text counts (decided there, streaming or not).
        self._tools = tools or ToolCallRules({}, recover=False)
        self._recovered = False
        self._logprobs = logprobs
        self._model_name = model_name
        self._speculative = speculative
        # Stable ids: streamed chunks and the final message name each call the same way.
        self._call_ids: list[str] = []
        self.text = ""  # all the text so far (only where it is parsed)
        self._content = ""  # content sent
        self._reasoning = ""  # reasoning sent
        self._arguments: list[str] = []  # each tool call's arguments sent (one entry once its name is)

    def _parse(self, text: str, partial: bool) -> dict[str, Any] | None:
        """The message in `text` (content, reasoning_content, tool_calls); None: wait for more text."""
        if not self._needs_parse:
            return {"content": text}
        try:
            parsed: dict[str, Any] = json.loads(self._parser.parse(text, partial))
        except ValueError:
            if partial:
                return None
            logger.warning("could not parse the model output as a message; returning it as text")
            parsed = {"content": text}
        content = parsed.get("content") or ""
        if partial:
            parsed["content"] = self._tools.shown(content)  # not what may still become a tool call
        else:
            decision = self._tools.decide(content, parsed.get("tool_calls") or [])
            parsed["content"], parsed["tool_calls"] = decision.content, decision.tool_calls
            self._recovered = decision.recovered
        for i, raw in enumerate(parsed.get("tool_calls") or []):
            if i >= len(self._call_ids):
                self._call_ids.append(raw.get("id") or new_call_id())
            raw["id"] = self._call_ids[i]
        return parsed

    # -- streaming --------------------------------------------------------------------------

    def chunks(self, natives: Iterable[_native.Chunk]) -> Iterator[ChatGenerationChunk]:
        """A chunk for each token that changes the message (or carries logprobs)."""
        for native in natives:
            if self._needs_parse:
                self.text += native.text
                _count_token(self._ends, native, len(self.text))
                message = self.delta(self.text, partial=True)
            else:
                message = AIMessageChunk(content=native.text) if native.text else None
            if not self._logprobs:
                if message is not None:
                    yield ChatGenerationChunk(message=message)
                continue
            if message is None:
                message = AIMessageChunk(content="")
            logprobs = _results.chat_logprobs([native])
            message.response_metadata = {"logprobs": logprobs}
            yield ChatGenerationChunk(message=message, generation_info={"logprobs": logprobs})

    def delta(self, text: str, partial: bool) -> AIMessageChunk | None:
        """The change in the message parsed from `text` since the last delta; None if nothing changed."""
        if not self._needs_parse:
            return None  # plain content was sent as it came
        parsed = self._parse(text, partial)
        if parsed is None:
            return None
        content = parsed.get("content") or ""
        reasoning = parsed.get("reasoning_content") or ""
        new_content = _after(self._content, content)
        new_reasoning = _after(self._reasoning, reasoning)
        self._content += new_content
        self._reasoning += new_reasoning
        calls = self._call_deltas(parsed.get("tool_calls") or [])
        if not (new_content or new_reasoning or calls):
            return None
        extra = {"reasoning_content": new_reasoning} if new_reasoning else {}
        return AIMessageChunk(content=new_content, tool_call_chunks=calls, additional_kwargs=extra)

    def _call_deltas(self, calls: list[dict[str, Any]]) -> list[ToolCallChunk]:
        """Chunks for tool calls: a call once its name is complete, then what its arguments add."""
        chunks = []
        for i, raw in enumerate(calls):
            function = raw.get("function") or {}
            name = function.get("name") or ""
            args = function.get("arguments") or ""
            if not isinstance(args, str):
                args = json.dumps(args)
            if i >= len(self._arguments):
                if not name:
                    break  # the name is not complete yet
                self._arguments.append(args)
                chunks.append(tool_call_chunk(name=name, args=args, id=raw["id"], index=i))
            elif args.startswith(self._arguments[i]) and len(args) > len(self._arguments[i]):
                chunks.append(tool_call_chunk(name=None, args=args[len(self._arguments[i]) :], id=None, index=i))
                self._arguments[i] = args
        return chunks

    def finish(self, request: _native.Request) -> Iterator[ChatGenerationChunk]:
        """What the whole text adds to the partial parses, then the last chunk: usage and metadata."""
        rest = self.delta(self.text, partial=False)
        if rest is not None:
            yield ChatGenerationChunk(message=rest)
        last = AIMessageChunk(
            content="",
            usage_metadata=_results.usage_metadata(request, self._reasoning_tokens(self.text, self._ends)),
            response_metadata=self._metadata(request, bool(self._arguments)),
            chunk_position="last",
        )
        yield ChatGenerationChunk(message=last)

    # -- all at once ------------------------------------------------------------------------

    def message(self, request: _native.Request, natives: list[_native.Chunk]) -> AIMessage:
        """The whole reply, parsed once (no callback waits for tokens)."""
        ends: list[int] = []
        text = ""
        for c in natives:
            text += c.text
            _count_token(ends, c, len(text))
        parsed = self._parse(text, partial=False) or {"content": text}
        tool_calls, invalid = parse_tool_calls(parsed.get("tool_calls") or [])
        metadata = self._metadata(request, bool(tool_calls))
        if self._logprobs:
            metadata["logprobs"] = _results.chat_logprobs(natives)
        extra = {"reasoning_content": parsed["reasoning_content"]} if parsed.get("reasoning_content") else {}
        return AIMessage(
            content=parsed.get("content") or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=_results.usage_metadata(request, self._reasoning_tokens(text, ends)),
            response_metadata=metadata,
            additional_kwargs=extra,
        )

    def _reasoning_tokens(self, text: str, ends: list[int]) -> int | None:
        """The reply's thinking tokens; None where the template has no thinking block."""
        return self._thinking.tokens(text, ends) if self._thinking is not None else None

    def _metadata(self, request: _native.Request, has_tool_calls: bool) -> dict[str, Any]:
        metadata = _results.response_metadata(request, self._model_name, self._speculative, has_tool_calls)
        if self._recovered:
            metadata["tool_calls_recovered"] = True  # written as text by the model, read by _tool_calls
        return metadata


def _count_token(ends: list[int], native: _native.Chunk, end: int) -> None:
    """Note where a token's text ends (text released at the end, which is no token, joins the last one)."""
    if native.token >= 0 or not ends:
        ends.append(end)
    else:
        ends[-1] = end


def _after(sent: str, now: str) -> str:
    """What `now` adds to `sent` ("" where the parse changed or took back what was sent: it stays sent,
    and only what goes beyond it is sent later)."""
    return now[len(sent) :] if now.startswith(sent) else ""
