"""Where a chat reply's tool calls are decided.

llama.cpp's chat parser reads the calls a model writes in its template's format. Small models often write a
call as plain JSON instead, after a tool result especially: bare, in a ```json fence, or in the doubled braces
that Qwen's template shows them (``{{"name": "get_weather", "arguments": {...}}}``), which no parser reads.
With tools bound and tool_choice "auto", such JSON ending the reply is recovered as tool calls when every
object in it names a bound tool and its arguments match that tool's parameter schema (`_json_schema`); the
reply then says so in ``response_metadata["tool_calls_recovered"]``. Anything else (prose that mentions a
tool, JSON naming no bound tool, arguments that do not validate) stays text.

Every path that returns a chat reply asks `ToolCallRules`: the final decision (`decide`) and, while
streaming, how much of the content may be shown before it is decided (`shown`), so that a stream and a
single call give the same message. The server and tools with a response schema belong here too.

Tools with a response schema: llama.cpp's chat code drops the tools where it is given a schema, so the
grammar of such a reply is made here (`call_or_answer_grammar`): the template's grammar for a call, or the
schema's for the answer, and the reply is read with the tools' parser. An answer held to a schema is its
JSON alone, without the ```json fence the schema's grammar allows around it.

Model output is untrusted: only the last `MAX_SCAN` characters are read, JSON nested deeper than
`MAX_NESTING` stays text, and at most `MAX_STARTS` places where a call may start are tried.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from langchain_llamacpp._json_schema import schema_error

MAX_SCAN = 16_384  # characters at the end of a reply that may hold calls written as text
MAX_NESTING = 32  # brackets deep
MAX_STARTS = 64  # places (an opening brace, bracket or fence that may start a call) tried per reply
_WINDOW = 256  # characters after a start that tell whether it may open a call

# The keys of a call written as JSON: {"name", "arguments"} and its variants ("parameters", "args",
# OpenAI's {"type": "function", "function": {...}}, an "id").
_CALL_KEYS = frozenset({"name", "arguments", "parameters", "args", "function", "type", "id"})
_ARGUMENT_KEYS = ("arguments", "parameters", "args")

_START = re.compile(r"```|[{\[]|`{1,2}\Z")  # at the end, backticks may be a fence's first
_OPENING = re.compile(r"(?:```[\w-]*\s*)?(?:[{\[]\s*)*")  # a fence, then braces and brackets
_FIRST_KEY = re.compile(r'"([^"\\]*)("?)')
_FENCE = re.compile(r"```[\w-]*")  # and its language
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Decision:
    """A reply's content and tool calls (OpenAI's shape: id, type, function name and JSON arguments)."""

    content: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    recovered: bool = False  # the calls were written as text and read here


@dataclass(frozen=True)
class ToolCallRules:
    """The tools a reply may call (name -> JSON schema of the parameters), and whether calls written as
    text are recovered."""

    schemas: Mapping[str, Any]
    recover: bool
    structured: bool = False  # the answer is held to a JSON schema

    @classmethod
    def for_request(
        cls, tools: list[dict[str, Any]], choice: str, recover: bool, *, structured: bool = False
    ) -> ToolCallRules:
        """The rules for a request with `tools` (OpenAI's format) and llama.cpp's `choice`: calls are
        recovered from text only where the model may choose ("auto"; "required" is held to the template's
        format by a grammar, "none" calls nothing) and its answer is free (`structured`: a grammar holds
        calls and answer alike, and an answer is not to be read as calls)."""
        schemas = {t["function"]["name"]: t["function"].get("parameters") or {} for t in tools}
        recover = recover and bool(tools) and choice == "auto" and not structured
        return cls(schemas, recover=recover, structured=structured)

    def decide(self, content: str, tool_calls: list[dict[str, Any]]) -> Decision:
        """The final content and calls of a reply, from the chat parser's (`tool_calls` as it gives them)."""
        if self.structured and not tool_calls:
            return Decision(_unfenced(content))
        if tool_calls or not self.recover:
            return Decision(content, tool_calls)
        for start, calls in self._reads(content, final=True):
            if calls:
                return Decision(content[:start].rstrip(), [_openai_call(*c) for c in calls], recovered=True)
        return Decision(content)

    def shown(self, content: str) -> str:
        """What of a reply's partial content can be shown: all but what may still become a call (and
        trailing whitespace, which may precede one)."""
        if self.structured:
            return _unfenced_so_far(content)
        if not self.recover:
            return content
        for start, calls in self._reads(content, final=False):
            if start < 0:  # past MAX_STARTS `decide` reads no further: all from there is held until the end
                return content[: -start - 1].rstrip()
            if calls is not None:
                return content[:start].rstrip()
        return content.rstrip()

    def _reads(self, content: str, final: bool) -> Iterator[tuple[int, list[tuple[str, dict[str, Any]]] | None]]:
        """(start, calls read from there) for the places a call may start, in order, until MAX_STARTS were
        read; then once (-start - 1, None) where the next one would have been read. A run of values that
        turns out not to be calls also rules out every start inside it (each would reach the same end or
        its enclosing bracket), so each character is parsed about once, not once per start."""
        tried, skip_to = 0, 0
        for start in _starts(content):
            if start < skip_to:
                continue
            if tried == MAX_STARTS:
                yield -start - 1, None
                return
            tried += 1
            calls, stop = self._read(content[start:], final)
            skip_to = start + stop
            yield start, calls

    def _read(self, text: str, final: bool) -> tuple[list[tuple[str, dict[str, Any]]] | None, int]:
        """The calls that `text` consists of; None if it is not calls. Partial text (not `final`) gives the
        calls complete so far ([] for none yet) when it may still become calls. Second: where the text was
        found not to be calls (1 where that does not rule out later starts)."""
        calls: list[tuple[str, dict[str, Any]]] = []

        def take(value: Any) -> bool:
            # Each value as soon as it is read: text that is not calls is refused at its first value,
            # not after the whole tail is parsed (shown() runs at every chunk of a stream).
            for item in value if isinstance(value, list) else [value]:
                call = self._call(item)
                if call is None:
                    return False
                calls.append(call)
            return True

        values, complete, stop = _values(text, final, take)
        if values is None or (final and not (complete and values)):
            return None, max(stop, 1)
        return calls, 1

    def _call(self, item: Any) -> tuple[str, dict[str, Any]] | None:
        """(name, arguments) of one object written as a call of a bound tool with valid arguments."""
        if not isinstance(item, dict) or not item or not set(item) <= _CALL_KEYS:
            return None
        function = item.get("function")
        if isinstance(function, dict):
            item = function  # OpenAI's {"type": "function", "function": {"name": ..., "arguments": ...}}
        elif isinstance(function, str) and "name" not in item:
            item = {**item, "name": function}
        name = item.get("name")
        if not isinstance(name, str) or name not in self.schemas:
            return None
        args: Any = next((item[k] for k in _ARGUMENT_KEYS if k in item), {})
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except (ValueError, RecursionError):
                return None
        if (
            not isinstance(args, dict)
            or _deeper_than(args, MAX_NESTING)
            or schema_error(args, self.schemas[name]) is not None
        ):
            return None
        return name, args


def _starts(content: str) -> Iterator[int]:
    """Where in the scanned tail of `content` a call may start (an opening that may be a call's), in order."""
    match = _START.search(content, max(0, len(content) - MAX_SCAN))
    while match is not None:
        start = match.start()
        tail = content[start : start + _WINDOW]
        opening = _opening_end(tail)
        deep = sum(tail.count(c, 0, opening) for c in "{[") - MAX_NESTING
        if deep > 0:
            # Deeper than a call is read, and so is each opening inside this one up to `deep` brackets on:
            # skip them (a run of thousands of brackets would otherwise be tried one by one).
            match = _START.search(content, start + max(1, _nth_opener(tail, deep)))
            continue
        if _plausible_opening(tail, opening):
            yield start
        match = _START.search(content, start + 1)


def _nth_opener(tail: str, n: int) -> int:
    """The position in `tail` after its n-th brace or bracket."""
    seen = 0
    for i, c in enumerate(tail):
        seen += c in "{["
        if seen == n:
            return i + 1
    return len(tail)


def _plausible_opening(tail: str, opening: int) -> bool:
    """Whether `tail`, whose fence, braces and brackets end at `opening`, may open a call: the first key
    is (or, where the text ends, may still become) one of a call's keys."""
    if "```".startswith(tail):
        return True  # a fence's first backticks, at the end
    rest = tail[opening:]
    if not rest:
        return True
    key = _FIRST_KEY.match(rest)
    if key is None:
        return False
    if key.group(2):
        return key.group(1) in _CALL_KEYS
    return key.end() == len(rest) and any(k.startswith(key.group(1)) for k in _CALL_KEYS)


def _opening_end(tail: str) -> int:
    opening = _OPENING.match(tail)
    return opening.end() if opening else 0


def _values(text: str, final: bool, take: Callable[[Any], bool]) -> tuple[list[Any] | None, bool, int]:
    """The JSON values of a run of calls that is all of `text`: objects or lists of them, in doubled braces
    or in fences, apart by spaces or commas, each accepted by `take` as it is read. (values, complete, stop);
    values None: not such a run, and no call starts before `stop` (0: no place to tell). Partial text gives what is
    complete so far and False where the rest may still complete it."""
    values: list[Any] = []
    pos, fenced = _skip(text, 0), False
    while pos < len(text):
        if text.startswith("```", pos):
            pos, fenced = (pos + 3, False) if fenced else (_fence_end(text, pos), True)
        elif "```".startswith(text[pos:]):
            return values, False, pos  # a fence's first backticks
        elif text[pos] == "," and values:
            pos += 1
        elif text[pos] in "{[":
            value, end = _value(text, pos)
            # Broken or unfinished: a start before this value reaches it too; one inside it may not.
            if value is _INCOMPLETE:
                return (None, False, pos + 1) if final else (values, False, 0)
            if value is _INVALID:
                return None, False, pos + 1
            if not take(value):
                return None, False, end  # a whole value that is not a call: no start inside it is one
            values.append(value)
            pos = end
        else:
            return None, False, pos
        pos = _skip(text, pos)
    return values, not fenced or final, 0


_INCOMPLETE, _INVALID = object(), object()


def _value(text: str, pos: int) -> tuple[Any, int]:
    """The JSON object or array at `pos` (an object in doubled braces: the inner one), and where it ends;
    _INCOMPLETE where the text ends first (or the JSON is broken: partial text may not tell), _INVALID
    where a doubled brace is not closed."""
    inner = _skip(text, pos + 1)
    doubled = text[pos] == "{" and text.startswith("{", inner)
    try:
        value, end = _DECODER.raw_decode(text, inner if doubled else pos)
    except RecursionError:
        return _INVALID, pos
    except ValueError:
        return _INCOMPLETE, pos
    if _deeper_than(value, MAX_NESTING):
        return _INVALID, pos
    if not doubled:
        return value, end
    end = _skip(text, end)
    if end == len(text):
        return _INCOMPLETE, pos
    return (value, end + 1) if text[end] == "}" else (_INVALID, pos)


def _fence_end(text: str, pos: int) -> int:
    fence = _FENCE.match(text, pos)
    return fence.end() if fence else pos + 3


def _skip(text: str, pos: int) -> int:
    """The first position from `pos` that is not whitespace."""
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests more than `limit` objects and arrays deep."""
    if not isinstance(value, (dict, list)):
        return False
    if limit == 0:
        return True
    items = value.values() if isinstance(value, dict) else value
    return any(_deeper_than(item, limit - 1) for item in items)


def _openai_call(name: str, args: dict[str, Any]) -> dict[str, Any]:
    """A recovered call in the chat parser's shape (its id is given where the message is built)."""
    return {"id": "", "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


_FENCED = re.compile(r"\A\s*```(?:json)?\s*(.*?)\s*```\s*\Z", re.S)
_FENCE_OPENING = re.compile(r"```(?:json)?\s*")


def _unfenced(content: str) -> str:
    """A structured answer's JSON, out of the ```json fence around it if there is one."""
    fenced = _FENCED.match(content)
    return fenced.group(1) if fenced else content


def _unfenced_so_far(content: str) -> str:
    """What of a partial structured answer is surely its JSON: no fence, nor what may become one."""
    text = content.lstrip()
    if "```json".startswith(text):
        return ""
    opening = _FENCE_OPENING.match(text)
    if opening is None:
        return content
    return text[opening.end() :].rstrip("` \t\r\n")  # the closing fence may be coming


# -- one grammar for a call or an answer ---------------------------------------------------------------

_GBNF_WORD = re.compile(r"[A-Za-z0-9-]+")  # a rule name, as llama.cpp's grammar parser reads one


def call_or_answer_grammar(calls: str, answer: str) -> str:
    """One GBNF grammar that takes a reply of either grammar (both llama.cpp's, both starting at the
    generation prompt): a tool call in the template's format, or the answer in the schema's JSON. Each
    grammar's rules are renamed apart, as their helper rules share names."""
    if not calls or not answer:
        raise ValueError("tools with a response schema need the chat template's tool-call grammar and the schema's")
    return "root ::= call-root | answer-root\n" + _renamed(calls, "call-") + "\n" + _renamed(answer, "answer-")


def _renamed(grammar: str, prefix: str) -> str:
    """`grammar` with `prefix` before every rule name (where defined and where used): the words outside
    literals, character classes, repetition counts and comments."""
    out, i, n = [], 0, len(grammar)
    while i < n:
        c = grammar[i]
        if c == '"' or c == "[":
            end = _literal_end(grammar, i, '"' if c == '"' else "]")
        elif c == "{":
            end = grammar.find("}", i) + 1
        elif c == "#":
            end = grammar.find("\n", i) % (n + 1)  # to the line's end, or the grammar's
        else:
            word = _GBNF_WORD.match(grammar, i)
            if word is not None:
                out.append(prefix + word.group())
                i = word.end()
                continue
            end = i + 1
        if end <= i:
            raise ValueError(f"unterminated {c!r} in a tool-call or schema grammar")
        out.append(grammar[i:end])
        i = end
    return "".join(out)


def _literal_end(grammar: str, start: int, close: str) -> int:
    """Where the literal or character class at `start` ends (after `close`, backslash escapes skipped); -1
    where it does not."""
    i = start + 1
    while i < len(grammar):
        if grammar[i] == "\\":
            i += 2
        elif grammar[i] == close:
            return i + 1
        else:
            i += 1
    return -1


def tool_call_recovery(chat_options: Mapping[str, Any], default: bool) -> bool:
    """A call's `tool_call_recovery` option, else the instance's."""
    value = chat_options.get("tool_call_recovery", default)
    if not isinstance(value, bool):
        raise ValueError(f"tool_call_recovery must be True or False, not {value!r}")
    return value
