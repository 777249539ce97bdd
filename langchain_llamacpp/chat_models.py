"""`ChatLlamaCpp`: a LangChain chat model on a local GGUF model, with the model's own chat
template, tool calling and grammar-constrained structured output."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import itemgetter
from types import FrameType
from typing import Any, ClassVar, Literal

from langchain_core._api import warn_deprecated
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LangSmithParams, LanguageModelInput, ModelProfile
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
)
from langchain_core.output_parsers.openai_tools import PydanticToolsParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableGenerator, RunnablePassthrough
from langchain_core.runnables.utils import AddableDict
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, Field, PrivateAttr, model_validator

import langchain_llamacpp._native as _native
import langchain_llamacpp._offloop as _offloop
import langchain_llamacpp._request as _request
import langchain_llamacpp._results as _results
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._base import LlamaCppBase
from langchain_llamacpp._chat_request import CHAT_OPTIONS, chat_request, render, reply_parser, request_params
from langchain_llamacpp._chat_stream import ChatStream, Thinking
from langchain_llamacpp._messages import convert_tools_to_openai, normalize_tool_choice
from langchain_llamacpp._params import PathText
from langchain_llamacpp._readers import AsyncRequest, BlockingRequest
from langchain_llamacpp._templates import TemplateSandbox
from langchain_llamacpp._text import valid_text
from langchain_llamacpp._tool_calls import tool_call_recovery


@dataclass
class _Call:
    """One prepared chat request, and the reader of its reply."""

    engine: _native.Engine
    params: _native.RequestParams
    options: dict[str, Any]
    stream: ChatStream


class ChatLlamaCpp(LlamaCppBase, BaseChatModel):
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

    The split follows llama.cpp's own chat parser for the model's template. Structured output
    (`with_structured_output`) always separates it: the thinking comes first, unconstrained, and the
    schema holds the answer after it. Can also be given per call: `llm.invoke(..., reasoning=True)`.
    """

    reasoning_budget: int | None = Field(None, ge=0)
    """The most tokens a model may think for (llama.cpp's reasoning-budget sampler, as llama-server's
    `reasoning_budget_tokens`): past it the thinking block is closed with the template's own end tag and the
    answer follows (free text, tool calls or the schema's JSON). `None` (default): no limit; `0`: the
    block is closed at once. Bounds the thinking of templates whose tags llama.cpp knows (Qwen3, DeepSeek-R1
    and its distills, ...); elsewhere it changes nothing but a warning that says so. The thinking tokens are reported in
    `usage_metadata["output_token_details"]["reasoning"]`. Can also be given per call:
    `llm.invoke(..., reasoning_budget=256)`."""

    enable_thinking: bool | None = Field(None, json_schema_extra={"deprecated": True})
    """Deprecated: use `reasoning` (`reasoning=False` turns thinking off, as `enable_thinking=False`
    did, through the template's own `enable_thinking` switch). Still works, with a
    LangChainDeprecationWarning; `False` is taken as `reasoning=False`."""

    mmproj_path: PathText | None = None
    """The model's multimodal projector (an `mmproj-*.gguf` file, published beside vision models such as
    Gemma 3, SmolVLM, LLaVA, Pixtral or Mistral Small 3.1): with it, messages may carry images (and audio,
    for audio models) as content blocks. Read by llama.cpp's libmtmd. `from_pretrained(..., mmproj=True)`
    downloads the one beside the model and sets it."""

    tool_call_recovery: bool = True
    """With tools bound and `tool_choice="auto"`: a reply that ends in a tool call written as plain JSON
    (bare, in a ```json fence, or in the doubled braces Qwen's template shows, ``{{"name": ..., "arguments":
    {...}}}``) instead of the template's format becomes a tool call, when it names a bound tool and its
    arguments validate against that tool's schema; `response_metadata["tool_calls_recovered"]` is then True.
    Small models often write calls that way after a tool result. Prose that mentions a tool, and JSON that
    does not validate, stay text. While streaming, a reply that may be such a call is held back until it is
    decided. `False` leaves the text as the model wrote it. Can also be given per call:
    `llm.invoke(..., tool_call_recovery=False)`."""

    _settings_class: ClassVar[str] = _settings.CHAT
    _templates: TemplateSandbox | None = PrivateAttr(default=None)
    _said_no_thinking: bool = PrivateAttr(default=False)  # the warning that reasoning=True does nothing, given

    @model_validator(mode="after")
    def _one_thinking_switch(self) -> ChatLlamaCpp:
        """`enable_thinking` (deprecated) as `reasoning`, the one field for thinking (ChatOllama's name)."""
        if self.enable_thinking is None:
            return self
        warn_deprecated(
            "0.1.0",
            message="ChatLlamaCpp(enable_thinking=...) is deprecated: use reasoning=False to turn thinking off "
            "(reasoning=True separates the thinking into reasoning_content; None, the default, leaves the model's "
            "default)",
            stacklevel=5,
        )
        if self.enable_thinking is False:
            if self.reasoning is True:
                raise ValueError("enable_thinking=False and reasoning=True contradict each other: give reasoning only")
            self.reasoning = False
        return self

    @classmethod
    def is_lc_serializable(cls) -> bool:
        return True

    def _resolve_model_profile(self) -> ModelProfile | None:
        # Tool calls and structured output are held to the template's format and the schema by grammars,
        # tools and a response schema together (`_tool_calls.call_or_answer_grammar`): LangChain's agents
        # then use the provider strategy for `response_format`.
        return ModelProfile(tool_calling=True, tool_choice=True, tool_call_streaming=True, structured_output=True)

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
            "reasoning_budget": self.reasoning_budget,
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

        A model that thinks first (Qwen3, DeepSeek-R1 distills) thinks freely and the grammar holds
        the answer after its thinking; `include_raw=True` gives the thinking in the raw message's
        `additional_kwargs["reasoning_content"]`, `reasoning=False` turns it off where the template can,
        and `reasoning_budget` bounds it.
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
        # The model first, so that a call's own options (`reasoning=False`, `reasoning_budget=...`) reach it:
        # ChatOpenAI's `RunnableMap(raw=llm)` drops them. Chunks still stream as {"raw": chunk}.
        return llm | RunnableGenerator(_as_raw, _aas_raw) | parser_with_fallback

    # -- request preparation ----------------------------------------------------------------

    def _chat_templates(self) -> TemplateSandbox:
        if self._templates is None:
            config = _settings.model_config(self)
            self._templates = TemplateSandbox(
                config.path, config.kv_overrides, valid_text(self.chat_template or "", "chat_template")
            )
        return self._templates

    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        chat_options = {k: kwargs.pop(k) for k in CHAT_OPTIONS if k in kwargs}
        engine = self.load()
        options = _request.call_options(self, kwargs)
        request = chat_request(
            messages,
            chat_options,
            options,
            reasoning=self.reasoning,
            enable_thinking=self.enable_thinking is not False,
            media_marker=engine.media_marker,
            reasoning_budget=self.reasoning_budget,
        )
        rendered = render(request, self._chat_templates().apply)
        thinking = Thinking.of(rendered)
        if request.reasoning and not rendered.supports_thinking:
            self._say_no_thinking(
                "reasoning=True", "there is no reasoning to separate (additional_kwargs has no reasoning_content)"
            )
        elif request.reasoning_budget is not None and request.reasoning is not False and thinking is None:
            self._say_no_thinking("reasoning_budget", "there is no thinking to bound")
        params = request_params(engine, request, rendered, _request.stop_list(self, stop), options)
        parser, parse = reply_parser(request, rendered)
        stream = ChatStream(
            parser,
            parse=parse,
            tools=request.tool_call_rules(tool_call_recovery(chat_options, self.tool_call_recovery)),
            logprobs=options["logprobs"] is not None,
            model_name=self._model_name(),
            speculative=self._speculative,
            thinking=thinking,
        )
        return _Call(engine, params, options, stream)

    def _say_no_thinking(self, setting: str, so: str) -> None:
        """Warn (once per instance) that `setting` was asked of a template that has no thinking."""
        if not self._said_no_thinking:
            self._said_no_thinking = True
            warnings.warn(
                f"{setting} has no effect: the chat template of {self._model_name()} has no thinking mode, so {so}",
                UserWarning,
                stacklevel=_caller_stacklevel(),
            )

    # -- LangChain entry points ------------------------------------------------------------

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if run_manager and run_manager.handlers:
            return _aggregate(list(self._stream(messages, stop=stop, run_manager=run_manager, **kwargs)))
        # No callback waits for tokens: the reply is read when done and parsed once.
        call = self._prepare(messages, stop, kwargs)
        pending = BlockingRequest(call.engine, call.params, call.options["timeout"])
        chunks = pending.wait()
        request = pending.request
        _results.report(request, self.verbose)
        message = call.stream.message(request, chunks)
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
        return _aggregate([c async for c in self._astream(messages, stop=stop, run_manager=run_manager, **kwargs)])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        pending = BlockingRequest(call.engine, call.params, call.options["timeout"])
        try:
            for chunk in call.stream.chunks(pending):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            _results.report(pending.request, self.verbose)
            for chunk in call.stream.finish(pending.request):
                if run_manager and chunk.text:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            pending.cancel()  # a stream left early

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # Loading (the first call), the template worker's start, rendering, tokenizing and the grammar
        # block for up to seconds: in a worker thread, so that the loop runs on meanwhile.
        call = await _offloop.off_loop(functools.partial(self._prepare, messages, stop, kwargs))
        stream = await AsyncRequest.submit(call.engine, call.params, call.options["timeout"])
        try:
            async for batch in stream.batches():
                for chunk in call.stream.chunks(batch):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            _results.report(stream.request, self.verbose)
            for chunk in call.stream.finish(stream.request):
                if run_manager and chunk.text:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        finally:
            stream.close()  # a stream left early


def _caller_stacklevel() -> int:
    """The `stacklevel` of the nearest frame outside this package, LangChain and asyncio: the user's call
    (1, the warning's own line, where there is none: a call prepared in a worker thread)."""
    frame: FrameType | None = sys._getframe(2)
    level = 2
    while frame is not None:
        if frame.f_globals.get("__name__", "").partition(".")[0] not in _LIBRARY_MODULES:
            return level
        frame, level = frame.f_back, level + 1
    return 1


_LIBRARY_MODULES = ("langchain_llamacpp", "langchain_core", "asyncio", "concurrent", "threading", "contextvars")


def _aggregate(chunks: list[ChatGenerationChunk]) -> ChatResult:
    """The reply that streamed chunks add up to."""
    chunk = chunks[0]
    for piece in chunks[1:]:
        chunk += piece
    return ChatResult(
        generations=[ChatGeneration(message=_chunk_to_message(chunk.message), generation_info=chunk.generation_info)]
    )


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


def _as_raw(chunks: Iterator[Any]) -> Iterator[AddableDict]:
    """Each chunk of the model's reply as `include_raw`'s {"raw": chunk} (summed as RunnableMap's are)."""
    for chunk in chunks:
        yield AddableDict(raw=chunk)


async def _aas_raw(chunks: AsyncIterator[Any]) -> AsyncIterator[AddableDict]:
    async for chunk in chunks:
        yield AddableDict(raw=chunk)
