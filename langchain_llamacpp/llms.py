"""`LlamaCpp`: a LangChain LLM (text completion) on a local GGUF model."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

import langchain_llamacpp._native as _native
import langchain_llamacpp._offloop as _offloop
import langchain_llamacpp._request as _request
import langchain_llamacpp._results as _results
from langchain_llamacpp._base import LlamaCppBase
from langchain_llamacpp._readers import AsyncRequest, BlockingRequest
from langchain_llamacpp._text import valid_text


class LlamaCpp(LlamaCppBase, BaseLLM):
    """Text completion with a local GGUF model through llama.cpp.

    A drop-in replacement for ``langchain_community.llms.LlamaCpp``: the same fields, so
    existing code works with the import changed. Generation runs in a native engine thread;
    concurrent calls (``batch``, threads, asyncio) are decoded together.

    Setup:
        .. code-block:: bash

            pip install langchain-llamacpp

    Instantiate:
        .. code-block:: python

            from langchain_llamacpp import LlamaCpp

            llm = LlamaCpp(model_path="gemma-3-270m-q4_k_m.gguf", temperature=0, max_tokens=64)

    Invoke:
        .. code-block:: python

            llm.invoke("The capital of France is")

    Stream:
        .. code-block:: python

            for text in llm.stream("Once upon a time"):
                print(text, end="", flush=True)

    Chain:
        .. code-block:: python

            from langchain_core.prompts import PromptTemplate

            chain = PromptTemplate.from_template("Q: {question}\\nA:") | llm.bind(stop=["\\n"])
            chain.invoke({"question": "What is 2 + 2?"})

    Constrained output (a bundled GBNF grammar):
        .. code-block:: python

            json_llm = LlamaCpp(model_path="gemma-3-270m-q4_k_m.gguf", grammar_path="json", max_tokens=64)
            json_llm.invoke("A person described as JSON:")
    """

    @property
    def _llm_type(self) -> str:
        return "llamacpp"

    @property
    def _identifying_params(self) -> Mapping[str, Any]:
        return self._base_identifying_params()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params: LangSmithParams = self._add_ls_params(super()._get_ls_params(stop=stop, **kwargs), stop, kwargs)
        return params

    # -- request building ---------------------------------------------------------------------

    def _prompt_tokens(self, engine: _native.Engine, prompt: str, options: dict[str, Any]) -> list[int]:
        model = engine.model
        valid_text(prompt, "prompt")
        suffix = valid_text(options.get("suffix"), "suffix")
        if not suffix:
            return list(model.tokenize(prompt, add_special=True, parse_special=True))
        pre, suf, mid = model.fim_tokens
        if min(pre, suf, mid) < 0:
            raise ValueError(f"suffix needs a fill-in-the-middle model; {self._model_name()} has no FIM tokens")
        tokens = [model.bos_token] if model.add_bos and model.bos_token >= 0 else []
        tokens += [pre, *model.tokenize(prompt, add_special=False, parse_special=False)]
        tokens += [suf, *model.tokenize(suffix, add_special=False, parse_special=False), mid]
        return tokens

    def _submit(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[_native.Engine, _native.RequestParams, dict[str, Any]]:
        engine = self.load()
        options = _request.call_options(self, kwargs)
        tokens = self._prompt_tokens(engine, prompt, options)
        return engine, _request.request_params(tokens, _request.stop_list(self, stop), options), options

    async def _asubmit(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[AsyncRequest, dict[str, Any]]:
        """`_submit` and the submission from worker threads: loading (the first call), tokenizing and
        building the grammar block for up to seconds, which the event loop must not wait for."""
        engine, params, options = await _offloop.off_loop(functools.partial(self._submit, prompt, stop, kwargs))
        return await AsyncRequest.submit(engine, params, options["timeout"]), options

    # -- one request as chunks, and the generation they add up to ----------------------------
    #
    # `_stream` yields a request's chunks as they come; `_generate` reads the same chunks (all at
    # once where no callback waits for them) and adds them up. The async pair does the same.

    @staticmethod
    def _chunks(
        prompt: str | None, natives: Iterable[_native.Chunk], options: dict[str, Any]
    ) -> Iterator[GenerationChunk]:
        """The echoed prompt (unless `prompt` is None), then a chunk per token with text or logprobs."""
        if prompt is not None and options["echo"]:
            yield GenerationChunk(text=prompt)
        want_logprobs = options["logprobs"] is not None
        for native in natives:
            if native.text or want_logprobs:
                info = {"logprobs": _results.completion_logprobs([native])} if want_logprobs else None
                yield GenerationChunk(text=native.text, generation_info=info)

    def _last_chunk(self, request: _native.Request) -> GenerationChunk:
        """The chunk that ends a request: no text, its generation info."""
        _results.report(request, self.verbose)
        return GenerationChunk(text="", generation_info=_results.generation_info(request, self._speculative))

    def _read(
        self,
        prompt: str,
        options: dict[str, Any],
        pending: BlockingRequest,
        run_manager: CallbackManagerForLLMRun | None,
        live: bool = True,
    ) -> Iterator[GenerationChunk]:
        """A request's chunks, each token as it comes (`live`) or all once the request is done."""
        try:
            for chunk in self._chunks(prompt, pending if live else pending.wait(), options):
                if run_manager:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            yield self._last_chunk(pending.request)
        finally:
            pending.cancel()  # a stream left early, or never started

    async def _aread(
        self,
        prompt: str,
        options: dict[str, Any],
        stream: AsyncRequest,
        run_manager: AsyncCallbackManagerForLLMRun | None,
    ) -> AsyncIterator[GenerationChunk]:
        """`_read` from the event loop."""
        try:
            for chunk in self._chunks(prompt, (), options):  # the echo, before any output
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
            async for batch in stream.batches():
                for chunk in self._chunks(None, batch, options):
                    if run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
            yield self._last_chunk(stream.request)
        finally:
            stream.close()  # a stream left early, or never started

    @staticmethod
    def _generation(chunks: list[GenerationChunk], options: dict[str, Any]) -> Generation:
        """What a request's chunks add up to: the whole text, the last chunk's info and every token's logprobs."""
        info = dict(chunks[-1].generation_info or {})
        if options["logprobs"] is not None:
            parts = [c.generation_info["logprobs"] for c in chunks[:-1] if c.generation_info]
            info["logprobs"] = _results.join_completion_logprobs(parts)
        return Generation(text="".join(c.text for c in chunks), generation_info=info)

    def _result(self, generations: list[Generation]) -> LLMResult:
        totals = {key: 0 for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
        for generation in generations:
            for key in totals:
                totals[key] += (generation.generation_info or {})["usage"][key]
        return LLMResult(
            generations=[[g] for g in generations],
            llm_output={"token_usage": totals, "model_name": self._model_name()},
        )

    # -- LangChain entry points ---------------------------------------------------------------

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # Submit every prompt first: the engine decodes them together while we read them in turn.
        submitted: list[tuple[str, dict[str, Any], BlockingRequest]] = []
        try:
            for prompt in prompts:
                engine, params, options = self._submit(prompt, stop, kwargs)
                submitted.append((prompt, options, BlockingRequest(engine, params, options["timeout"])))
            # Without callbacks waiting for tokens, each request is read at once when it is done.
            callbacks = run_manager if run_manager and run_manager.handlers else None
            generations = []
            for prompt, options, pending in submitted:
                chunks = self._read(prompt, options, pending, callbacks, live=callbacks is not None)
                generations.append(self._generation(list(chunks), options))
        finally:
            for *_, pending in submitted:
                pending.cancel()
        return self._result(generations)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        async def one(prompt: str) -> Generation:
            stream, options = await self._asubmit(prompt, stop, kwargs)
            return self._generation([c async for c in self._aread(prompt, options, stream, run_manager)], options)

        return self._result(list(await asyncio.gather(*(one(p) for p in prompts))))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        engine, params, options = self._submit(prompt, stop, kwargs)
        pending = BlockingRequest(engine, params, options["timeout"])
        yield from self._read(prompt, options, pending, run_manager)

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        stream, options = await self._asubmit(prompt, stop, kwargs)
        async for chunk in self._aread(prompt, options, stream, run_manager):
            yield chunk
