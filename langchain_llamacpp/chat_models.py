"""`ChatLlamaCpp`: a LangChain chat model on a local GGUF model, with the model's own chat
template, tool calling and grammar-constrained structured output."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
)
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, PrivateAttr, model_validator

import langchain_llamacpp._engine as _engine
import langchain_llamacpp._native as _native
from langchain_llamacpp._base import LlamaCppParams
from langchain_llamacpp._deadline import BlockingRequest
from langchain_llamacpp._messages import (
    MediaFiles,
    convert_messages_to_llamacpp,
    convert_tools_to_openai,
    extract_json_tool_calls,
    force_tool_call_grammar,
    looks_like_json_call,
    new_call_id,
    normalize_tool_choice,
    parse_tool_calls,
)
from langchain_llamacpp._templates import TemplateSandbox

# Keyword arguments that shape the prompt rather than sampling.
_CHAT_OPTIONS = ("tools", "tool_choice", "parallel_tool_calls", "json_schema", "reasoning")


@dataclass
class _Call:
    """One prepared chat request."""

    engine: _native.Engine
    params: _native.RequestParams
    parser: _native.ChatParser
    parse: bool  # output needs parsing (tools, reasoning); otherwise it is plain content
    options: dict[str, Any]
    tool_names: list[str] = field(default_factory=list)  # tools the model may call ("auto")
    call_ids: list[str] = field(default_factory=list)


class ChatLlamaCpp(LlamaCppParams, BaseChatModel):
    """Chat with a local GGUF model through llama.cpp.

    Messages are rendered with the model's own Jinja chat template by llama.cpp's template
    engine (no Python code runs from the model file). Tool calls use the template's native
    format and are parsed by llama.cpp; structured output is constrained by a grammar built
    from the schema, so it always parses.

    Instantiate:
        .. code-block:: python

            from langchain_llamacpp import ChatLlamaCpp

            llm = ChatLlamaCpp(model_path="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", temperature=0)

    Invoke:
        .. code-block:: python

            llm.invoke([("system", "Translate to French."), ("human", "I love programming.")])

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Tell me a joke"):
                print(chunk.content, end="", flush=True)

    Tool calling:
        .. code-block:: python

            from langchain_core.tools import tool

            @tool
            def get_weather(city: str) -> str:
                "Get the weather in a city."
                return "sunny"

            llm.bind_tools([get_weather]).invoke("What's the weather in Paris?").tool_calls

    Structured output:
        .. code-block:: python

            from pydantic import BaseModel

            class Joke(BaseModel):
                setup: str
                punchline: str

            llm.with_structured_output(Joke).invoke("Tell me a joke about cats")
    """

    chat_template: str | None = None
    """A Jinja chat template to use instead of the one in the GGUF file."""

    reasoning: bool | None = None
    """Reasoning (thinking) output of models that think before answering (Qwen3, DeepSeek-R1
    distills, gpt-oss, ...), with ChatOllama's meaning:

    - `True`: the thinking is separated from the answer into
      `additional_kwargs["reasoning_content"]` (and reasoning blocks in `content_blocks`, or in
      `content` with `output_version="v1"`), also chunk by chunk while streaming.
    - `False`: thinking is turned off where the chat template supports it (`enable_thinking`).
    - `None` (default): the model's default; its thinking, if any, stays in the text.

    The split follows llama.cpp's own chat parser for the model's template. Can also be given per call:
    `llm.invoke(..., reasoning=True)`.
    """

    enable_thinking: bool = True
    """For templates with a reasoning mode: let the model think before answering (`reasoning=False`
    also turns it off)."""

    mmproj_path: str | None = None
    """The model's multimodal projector (an `mmproj-*.gguf` file, published beside vision models such as
    Gemma 3, SmolVLM, LLaVA, Pixtral or Mistral Small 3.1): with it, messages may carry images (and audio,
    for audio models) as content blocks. Read by llama.cpp's libmtmd. `from_pretrained` finds it beside
    the model."""

    _templates: TemplateSandbox | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_mmproj(self) -> ChatLlamaCpp:
        if self.mmproj_path is not None:
            path = os.path.expanduser(os.fspath(self.mmproj_path))
            if not os.path.exists(path):
                raise FileNotFoundError(f"projector (mmproj) file not found: {path}")
            self.mmproj_path = path
        return self

    def _engine_config(self, embeddings: bool = False) -> _engine.EngineConfig:
        config = super()._engine_config(embeddings)
        return replace(config, mmproj_path=self.mmproj_path or "") if self.mmproj_path and not embeddings else config

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    @classmethod
    def get_lc_namespace(cls) -> list[str]:
        return ["langchain_llamacpp", "chat_models"]

    @property
    def _llm_type(self) -> str:
        return "llamacpp-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            **self._base_identifying_params(),
            "chat_template": self.chat_template,
            "reasoning": self.reasoning,
            "mmproj_path": self.mmproj_path,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params: LangSmithParams = self._add_ls_params(super()._get_ls_params(stop=stop, **kwargs), stop, kwargs)
        params["ls_model_type"] = "chat"
        return params

    # -- tools and structured output -------------------------------------------------------

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        parallel_tool_calls: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (pydantic models, functions, LangChain tools or OpenAI dicts).

        tool_choice: "auto" (default: the model may answer or call), "any"/"required" (must call
        one), "none", a tool's name or ``{"type": "function", "function": {"name": ...}}`` (must
        call that one), or True (must call; the only tool if there is one). Forced calls are
        constrained by a grammar, so their arguments always match the schema.
        """
        formatted = convert_tools_to_openai(tools)
        normalize_tool_choice(tool_choice, [t["function"]["name"] for t in formatted])  # fail early
        bound: dict[str, Any] = {"tools": formatted}
        if tool_choice is not None:
            bound["tool_choice"] = tool_choice
        if parallel_tool_calls is not None:
            bound["parallel_tool_calls"] = parallel_tool_calls
        return super().bind(**bound, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Output that matches `schema` (a pydantic class, TypedDict or JSON schema).

        method="json_schema" (default) constrains the reply with a grammar built from the schema;
        "function_calling" forces a call of a tool with that schema; "json_mode" constrains the
        reply to any JSON object (describe the shape in the prompt). `strict` is accepted for
        compatibility: the grammar already makes every method strict.
        """
        if kwargs:
            raise ValueError(f"unexpected arguments: {sorted(kwargs)}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)  # pydantic 2, or pydantic.v1
        parser: Runnable[Any, Any]
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools(
                [schema],
                tool_choice=name,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": tool},
            )
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_schema":
                json_schema = (
                    schema.model_json_schema()
                    if isinstance(schema, type) and issubclass(schema, BaseModel)
                    else convert_to_json_schema(schema)
                )
            else:
                json_schema = {"type": "object"}
            llm = self.bind(
                json_schema=json_schema,
                ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
            )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(f"unknown method {method!r}: use 'json_schema', 'function_calling' or 'json_mode'")
        if not include_raw:
            return llm | parser
        parser_with_fallback = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        ).with_fallbacks([RunnablePassthrough.assign(parsed=lambda _: None)], exception_key="parsing_error")
        return RunnableMap(raw=llm) | parser_with_fallback

    # -- request preparation ----------------------------------------------------------------

    def _chat_templates(self) -> TemplateSandbox:
        if self._templates is None:
            config = self._model_config()
            self._templates = TemplateSandbox(
                config.path, config.kv_overrides, _engine.valid_text(self.chat_template or "", "chat_template")
            )
        return self._templates

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        chat_kwargs = {k: kwargs.pop(k) for k in _CHAT_OPTIONS if k in kwargs}
        engine = self.load()
        options = self._options(kwargs)
        tools: list[dict[str, Any]] = chat_kwargs.get("tools") or []
        names = [t["function"]["name"] for t in tools]
        choice, forced = normalize_tool_choice(chat_kwargs.get("tool_choice"), names) if tools else ("auto", None)
        if forced is not None:
            tools = [t for t in tools if t["function"]["name"] == forced]
        json_schema = chat_kwargs.get("json_schema")
        if json_schema is not None and tools and choice != "none":
            raise ValueError("structured output (json_schema) cannot be combined with bound tools")
        user_grammar = self._grammar_text(options)
        if user_grammar and ((tools and choice != "none") or json_schema is not None):
            raise ValueError("a custom grammar cannot be combined with tools or structured output")

        reasoning = chat_kwargs.get("reasoning", self.reasoning)
        if reasoning not in (True, False, None):
            raise ValueError(f"reasoning must be True, False or None, not {reasoning!r}")
        # None leaves thinking in the text; False still lets llama.cpp strip the empty thinking block
        # that templates put in the prompt when thinking is off.
        reasoning_format = "none" if reasoning is None else "auto"
        media = MediaFiles(engine.media_marker)
        rendered = self._chat_templates().apply(
            _engine.json_text(convert_messages_to_llamacpp(messages, media), "messages"),
            _engine.json_text(tools, "tools") if tools else "",
            choice,
            bool(chat_kwargs.get("parallel_tool_calls", False)),
            _engine.json_text(json_schema, "json_schema") if json_schema is not None else "",
            True,
            {},
            self.enable_thinking and reasoning is not False,
            reasoning_format,
        )
        media_prompt = engine.tokenize_media(rendered["prompt"], media.files) if media.files else None
        tokens = (
            media_prompt.tokens
            if media_prompt is not None
            else engine.model.tokenize(rendered["prompt"], add_special=True, parse_special=True)
        )
        stops = self._stop_list(stop) + [s for s in rendered["additional_stops"] if s not in (stop or [])]
        template_grammar = rendered["grammar"]
        if template_grammar and choice == "required":
            template_grammar = force_tool_call_grammar(template_grammar)
        params = self._request_params(tokens, stops, options, grammar=template_grammar or user_grammar or "")
        params.media = media_prompt
        s = params.sampling
        if template_grammar:
            s.grammar_is_tool_call = True
            s.grammar_lazy = bool(rendered["grammar_lazy"])
            triggers = []
            for kind, value, token in rendered["grammar_triggers"]:
                trigger = _native.GrammarTrigger()
                trigger.type, trigger.value, trigger.token = kind, value, token
                triggers.append(trigger)
            s.grammar_triggers = triggers
            s.generation_prompt = rendered["generation_prompt"]
        s.preserved_tokens = list(rendered["preserved_tokens"])
        parse_tools = bool(tools) and choice != "none"
        parser = _native.ChatParser(
            rendered["format"], rendered["parser"], rendered["generation_prompt"], parse_tools, reasoning_format
        )
        needs_parse = parse_tools or bool(rendered["supports_thinking"]) or rendered["format"] != 0
        auto_names = [t["function"]["name"] for t in tools] if tools and choice == "auto" else []
        return _Call(engine, params, parser, needs_parse, options, auto_names)

    # -- output ----------------------------------------------------------------------------

    def _parse(self, call: _Call, text: str, partial: bool) -> dict[str, Any] | None:
        if not call.parse:
            return {"content": text}
        try:
            parsed: dict[str, Any] = json.loads(call.parser.parse(text, partial))
        except ValueError:
            if partial:
                return None  # wait for more text
            _engine.logger.warning("could not parse the model output as a message; returning it as text")
            return {"content": text}
        if not partial and call.tool_names and not parsed.get("tool_calls"):
            fallback = extract_json_tool_calls(parsed.get("content") or "", call.tool_names)
            if fallback:
                parsed["tool_calls"], parsed["content"] = fallback, ""
        # Stable ids: streamed chunks and the final message name each call the same way.
        for i, raw in enumerate(parsed.get("tool_calls") or []):
            if i >= len(call.call_ids):
                call.call_ids.append(raw.get("id") or new_call_id())
            raw["id"] = call.call_ids[i]
        return parsed

    def _usage_metadata(self, request: _native.Request) -> UsageMetadata:
        u = self._usage(request)
        # mypy 2.4 reads langchain-core's NotRequired output_token_details as required.
        usage: UsageMetadata = {  # type: ignore[typeddict-item]
            "input_tokens": u["prompt_tokens"],
            "output_tokens": u["completion_tokens"],
            "total_tokens": u["total_tokens"],
            "input_token_details": {"cache_read": u["cached_tokens"]},
        }
        return usage

    def _response_metadata(self, request: _native.Request, has_tool_calls: bool) -> dict[str, Any]:
        finish = request.finish_reason
        if has_tool_calls and finish == "stop":
            finish = "tool_calls"
        meta: dict[str, Any] = {
            "model_name": self._model_name(),
            "model_provider": "llamacpp",
            "finish_reason": finish,
            **self._draft_info(request),
        }
        if request.stop_string:
            meta["stop"] = request.stop_string
        return meta

    def _message(self, call: _Call, request: _native.Request, chunks: list[_native.Chunk]) -> AIMessage:
        text = "".join(c.text for c in chunks)
        parsed = self._parse(call, text, partial=False) or {"content": text}
        tool_calls, invalid = parse_tool_calls(parsed.get("tool_calls") or [])
        meta = self._response_metadata(request, bool(tool_calls))
        if call.options["logprobs"] is not None:
            meta["logprobs"] = _chat_logprobs(chunks)
        extra: dict[str, Any] = {}
        if parsed.get("reasoning_content"):
            extra["reasoning_content"] = parsed["reasoning_content"]
        return AIMessage(
            content=parsed.get("content") or "",
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=self._usage_metadata(request),
            response_metadata=meta,
            additional_kwargs=extra,
        )

    def _deltas(self, call: _Call, state: dict[str, Any], text: str, partial: bool) -> AIMessageChunk | None:
        """The change in the parsed message since the last chunk, as a message chunk."""
        if not call.parse:
            return None  # plain content was sent as it came (see _advance)
        parsed = self._parse(call, text, partial)
        if parsed is None:
            return None
        content = parsed.get("content") or ""
        if partial and call.tool_names and looks_like_json_call(content):
            content = state["content"]  # may be a tool call written as JSON: hold until the end
        reasoning = parsed.get("reasoning_content") or ""
        delta_content = content[len(state["content"]) :] if content.startswith(state["content"]) else ""
        delta_reasoning = reasoning[len(state["reasoning"]) :] if reasoning.startswith(state["reasoning"]) else ""
        state["content"], state["reasoning"] = content, reasoning
        chunks = []
        for i, raw in enumerate(parsed.get("tool_calls") or []):
            function = raw.get("function") or {}
            name = function.get("name") or ""
            args = function.get("arguments") or ""
            if not isinstance(args, str):
                args = json.dumps(args)
            sent = state["calls"]
            if i >= len(sent):
                if not name:
                    break  # the name is not complete yet
                sent.append("")
                chunks.append(tool_call_chunk(name=name, args=args, id=raw["id"], index=i))
                sent[i] = args
            elif args.startswith(sent[i]) and len(args) > len(sent[i]):
                chunks.append(tool_call_chunk(name=None, args=args[len(sent[i]) :], id=None, index=i))
                sent[i] = args
        if not (delta_content or delta_reasoning or chunks):
            return None
        extra = {"reasoning_content": delta_reasoning} if delta_reasoning else {}
        return AIMessageChunk(content=delta_content, tool_call_chunks=chunks, additional_kwargs=extra)

    def _final_chunk(self, call: _Call, request: _native.Request, state: dict[str, Any]) -> AIMessageChunk:
        return AIMessageChunk(
            content="",
            usage_metadata=self._usage_metadata(request),
            response_metadata=self._response_metadata(request, bool(state["calls"])),
            chunk_position="last",
        )

    @staticmethod
    def _new_state() -> dict[str, Any]:
        return {"text": "", "content": "", "reasoning": "", "calls": []}

    def _advance(self, call: _Call, state: dict[str, Any], native: _native.Chunk) -> ChatGenerationChunk | None:
        if call.parse:
            # Tool calls and reasoning are parsed from the whole text so far, as llama.cpp's server does.
            state["text"] += native.text
            message = self._deltas(call, state, state["text"], partial=True)
        else:
            # Plain content: nothing is kept, so a token costs the same at any length of output.
            message = AIMessageChunk(content=native.text) if native.text else None
        if message is None and call.options["logprobs"] is None:
            return None
        if message is None:
            message = AIMessageChunk(content="")
        info = {"logprobs": _chat_logprobs([native])} if call.options["logprobs"] is not None else None
        if info:
            message.response_metadata = {"logprobs": info["logprobs"]}
        return ChatGenerationChunk(message=message, generation_info=info)

    def _finish(self, call: _Call, state: dict[str, Any], request: _native.Request) -> Iterator[ChatGenerationChunk]:
        rest = self._deltas(call, state, state["text"], partial=False)
        if rest is not None:
            yield ChatGenerationChunk(message=rest)
        yield ChatGenerationChunk(message=self._final_chunk(call, request, state))

    # -- LangChain entry points ------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager and run_manager.handlers:
            chunk: ChatGenerationChunk | None = None
            for piece in self._stream(messages, stop=stop, run_manager=run_manager, **kwargs):
                chunk = piece if chunk is None else chunk + piece
            assert chunk is not None
            message = _chunk_to_message(chunk.message)
            return ChatResult(generations=[ChatGeneration(message=message, generation_info=chunk.generation_info)])
        call = self._prepare(messages, stop, kwargs)
        pending = BlockingRequest(call.engine, call.params, call.options["timeout"])
        chunks = pending.wait()
        request = pending.request
        self._report(request)
        message = self._message(call, request, chunks)
        return ChatResult(
            generations=[ChatGeneration(message=message, generation_info={"finish_reason": request.finish_reason})]
        )

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunk: ChatGenerationChunk | None = None
        async for piece in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs):
            chunk = piece if chunk is None else chunk + piece
        assert chunk is not None
        return ChatResult(
            generations=[
                ChatGeneration(message=_chunk_to_message(chunk.message), generation_info=chunk.generation_info)
            ]
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        pending = BlockingRequest(call.engine, call.params, call.options["timeout"])
        request = pending.request
        state = self._new_state()
        for native in pending:
            chunk = self._advance(call, state, native)
            if chunk is None:
                continue
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        self._report(request)
        for chunk in self._finish(call, state, request):
            if run_manager and chunk.text:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        state = self._new_state()
        stream = _engine.AsyncRequest(call.engine, call.params, call.options["timeout"])
        async for batch in stream.batches():
            for native in batch:
                chunk = self._advance(call, state, native)
                if chunk is None:
                    continue
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        self._report(stream.request)
        for chunk in self._finish(call, state, stream.request):
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    def get_num_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer."""
        return len(self.native_model.tokenize(_engine.valid_text(text, "text"), add_special=False, parse_special=True))

    def get_token_ids(self, text: str) -> list[int]:
        return list(self.native_model.tokenize(_engine.valid_text(text, "text"), add_special=False, parse_special=True))


def _chunk_to_message(chunk: BaseMessage) -> AIMessage:
    assert isinstance(chunk, AIMessageChunk)
    return AIMessage(
        content=chunk.content,
        tool_calls=chunk.tool_calls,
        invalid_tool_calls=chunk.invalid_tool_calls,
        usage_metadata=chunk.usage_metadata,
        response_metadata=chunk.response_metadata,
        additional_kwargs=chunk.additional_kwargs,
        id=chunk.id,
    )


def _chat_logprobs(chunks: list[_native.Chunk]) -> dict[str, Any]:
    """OpenAI chat-style logprobs: content = [{token, logprob, top_logprobs}]."""
    return {
        "content": [
            {
                "token": c.text,
                "token_id": c.token,
                "logprob": c.logprob,
                "top_logprobs": [{"token": t.text, "logprob": t.logprob} for t in c.top_logprobs],
            }
            for c in chunks
            if c.logprob is not None
        ]
    }
