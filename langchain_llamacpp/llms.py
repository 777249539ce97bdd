"""`LlamaCpp`: a LangChain LLM (text completion) on a local GGUF model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM, LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult

import langchain_llamacpp._engine as _engine
import langchain_llamacpp._native as _native
from langchain_llamacpp._base import LlamaCppParams
from langchain_llamacpp._deadline import BlockingRequest


class LlamaCpp(LlamaCppParams, BaseLLM):
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

            chain = PromptTemplate.from_template("Q: {question}\\nA:") | llm
            chain.invoke({"question": "What is 2 + 2?"})

    Constrained output (a bundled GBNF grammar):
        .. code-block:: python

            json_llm = LlamaCpp(model_path="...", grammar_path="json")
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
        _engine.valid_text(prompt, "prompt")
        suffix = _engine.valid_text(options.get("suffix"), "suffix")
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
        options = self._options(kwargs)
        params = self._request_params(self._prompt_tokens(engine, prompt, options), self._stop_list(stop), options)
        return engine, params, options

    def _generation_info(
        self, request: _native.Request, chunks: list[_native.Chunk], options: dict[str, Any]
    ) -> dict[str, Any]:
        info: dict[str, Any] = {"finish_reason": request.finish_reason}
        if request.stop_string:
            info["stop"] = request.stop_string
        if options["logprobs"] is not None:
            info["logprobs"] = _logprobs(chunks)
        info["usage"] = self._usage(request)
        info.update(self._draft_info(request))
        return info

    # -- LangChain entry points ---------------------------------------------------------------

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        # Submit every prompt first: the engine decodes them together while we read them in turn.
        submitted: list[tuple[str, BlockingRequest, dict[str, Any]]] = []
        generations: list[list[Generation]] = []
        totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        try:
            for prompt in prompts:
                engine, params, options = self._submit(prompt, stop, kwargs)
                submitted.append((prompt, BlockingRequest(engine, params, options["timeout"]), options))
            for prompt, pending, options in submitted:
                if run_manager and run_manager.handlers:
                    chunks = []
                    if options["echo"]:
                        run_manager.on_llm_new_token(prompt)
                    for chunk in pending:
                        chunks.append(chunk)
                        if chunk.text:
                            run_manager.on_llm_new_token(chunk.text, chunk=GenerationChunk(text=chunk.text))
                else:
                    chunks = pending.wait()
                request = pending.request
                self._report(request)
                text = "".join(c.text for c in chunks)
                if options["echo"]:
                    text = prompt + text
                generations.append(
                    [
                        Generation(
                            text=text,
                            generation_info=self._generation_info(request, chunks, options),
                        )
                    ]
                )
                for key in totals:
                    totals[key] += self._usage(request)[key]
        finally:
            for _, pending, _ in submitted:
                pending.cancel()
        return LLMResult(
            generations=generations,
            llm_output={"token_usage": totals, "model_name": self._model_name()},
        )

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        import asyncio

        async def one(prompt: str) -> tuple[Generation, dict[str, int]]:
            chunks: list[_native.Chunk] = []
            engine, params, options = self._submit(prompt, stop, kwargs)
            if options["echo"] and run_manager:
                await run_manager.on_llm_new_token(prompt)
            stream = _engine.AsyncRequest(engine, params, options["timeout"])
            async for batch in stream.batches():
                for chunk in batch:
                    chunks.append(chunk)
                    if chunk.text and run_manager:
                        await run_manager.on_llm_new_token(chunk.text, chunk=GenerationChunk(text=chunk.text))
            request = stream.request
            self._report(request)
            text = "".join(c.text for c in chunks)
            if options["echo"]:
                text = prompt + text
            gen = Generation(text=text, generation_info=self._generation_info(request, chunks, options))
            return gen, self._usage(request)

        results = await asyncio.gather(*(one(p) for p in prompts))
        totals = {k: sum(u[k] for _, u in results) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
        return LLMResult(
            generations=[[g] for g, _ in results],
            llm_output={"token_usage": totals, "model_name": self._model_name()},
        )

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        engine, params, options = self._submit(prompt, stop, kwargs)
        if options["echo"]:
            chunk = GenerationChunk(text=prompt)
            if run_manager:
                run_manager.on_llm_new_token(prompt, chunk=chunk)
            yield chunk
        pending = BlockingRequest(engine, params, options["timeout"])
        request = pending.request
        chunks: list[_native.Chunk] = []
        want_logprobs = options["logprobs"] is not None
        for native in pending:
            if want_logprobs:
                chunks.append(native)
            if not native.text and not want_logprobs:
                continue
            chunk = GenerationChunk(
                text=native.text,
                generation_info={"logprobs": _logprobs([native])} if want_logprobs else None,
            )
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk
        self._report(request)
        yield GenerationChunk(text="", generation_info=self._final_info(request))

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        engine, params, options = self._submit(prompt, stop, kwargs)
        if options["echo"]:
            chunk = GenerationChunk(text=prompt)
            if run_manager:
                await run_manager.on_llm_new_token(prompt, chunk=chunk)
            yield chunk
        want_logprobs = options["logprobs"] is not None
        stream = _engine.AsyncRequest(engine, params, options["timeout"])
        async for batch in stream.batches():
            for native in batch:
                if not native.text and not want_logprobs:
                    continue
                chunk = GenerationChunk(
                    text=native.text,
                    generation_info={"logprobs": _logprobs([native])} if want_logprobs else None,
                )
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
        self._report(stream.request)
        yield GenerationChunk(text="", generation_info=self._final_info(stream.request))

    def _final_info(self, request: _native.Request) -> dict[str, Any]:
        info: dict[str, Any] = {
            "finish_reason": request.finish_reason,
            "usage": self._usage(request),
            **self._draft_info(request),
        }
        if request.stop_string:
            info["stop"] = request.stop_string
        return info

    def get_num_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer."""
        return len(self.native_model.tokenize(_engine.valid_text(text, "text"), add_special=False, parse_special=True))

    def get_token_ids(self, text: str) -> list[int]:
        return list(self.native_model.tokenize(_engine.valid_text(text, "text"), add_special=False, parse_special=True))


def _logprobs(chunks: list[_native.Chunk]) -> dict[str, Any]:
    """OpenAI completion-style logprobs: tokens, token_logprobs, top_logprobs."""
    scored = [c for c in chunks if c.logprob is not None]
    return {
        "tokens": [c.text for c in scored],
        "token_ids": [c.token for c in scored],
        "token_logprobs": [c.logprob for c in scored],
        "top_logprobs": [{t.text: t.logprob for t in c.top_logprobs} for c in scored],
    }
