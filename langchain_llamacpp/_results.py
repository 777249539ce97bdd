"""What a finished request reports, in LangChain's shapes: usage, logprobs, generation info and
response metadata, and with `verbose` the call's timings as llama.cpp prints them."""

from __future__ import annotations

import sys
from typing import Any

from langchain_core.messages.ai import UsageMetadata

import langchain_llamacpp._native as _native
from langchain_llamacpp._logs import flush_native_logs


def usage(request: _native.Request) -> dict[str, int]:
    """Token counts, OpenAI's names (the engine's counters, `cached_tokens` from the prompt cache)."""
    u = request.usage
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "cached_tokens": u.cached_tokens,
    }


def usage_metadata(request: _native.Request, reasoning: int | None = None) -> UsageMetadata:
    """Token counts, LangChain's names (a chat message's `usage_metadata`); `reasoning`: the output's
    thinking tokens, where the template has a thinking block."""
    u = usage(request)
    # mypy 2.4 reads langchain-core's NotRequired output_token_details as required.
    metadata: UsageMetadata = {  # type: ignore[typeddict-item]
        "input_tokens": u["prompt_tokens"],
        "output_tokens": u["completion_tokens"],
        "total_tokens": u["total_tokens"],
        "input_token_details": {"cache_read": u["cached_tokens"]},
    }
    if reasoning is not None:
        metadata["output_token_details"] = {"reasoning": reasoning}
    return metadata


def draft_counts(request: _native.Request, speculative: bool) -> dict[str, int]:
    """Speculative decoding's counts for this call, named as llama-server reports them; {} without it."""
    if not speculative:
        return {}
    u = request.usage
    return {"draft_n": u.draft_n, "draft_n_accepted": u.draft_n_accepted}


def _ending(request: _native.Request) -> dict[str, str]:
    """The stop string that ended the output, if one did."""
    return {"stop": request.stop_string} if request.stop_string else {}


def generation_info(request: _native.Request, speculative: bool) -> dict[str, Any]:
    """A completion's `generation_info` (without logprobs, which come with each token)."""
    return {
        "finish_reason": request.finish_reason,
        **_ending(request),
        "usage": usage(request),
        **draft_counts(request, speculative),
    }


def response_metadata(
    request: _native.Request, model_name: str, speculative: bool, has_tool_calls: bool
) -> dict[str, Any]:
    """A chat reply's `response_metadata` (without logprobs, which come with each token)."""
    finish = request.finish_reason
    if has_tool_calls and finish == "stop":
        finish = "tool_calls"
    return {
        "model_name": model_name,
        "model_provider": "llamacpp",
        "finish_reason": finish,
        **draft_counts(request, speculative),
        **_ending(request),
    }


def completion_logprobs(chunks: list[_native.Chunk]) -> dict[str, Any]:
    """OpenAI completion-style logprobs: tokens, token_logprobs, top_logprobs."""
    scored = [c for c in chunks if c.logprob is not None]
    return {
        "tokens": [c.text for c in scored],
        "token_ids": [c.token for c in scored],
        "token_logprobs": [c.logprob for c in scored],
        "top_logprobs": [{t.text: t.logprob for t in c.top_logprobs} for c in scored],
    }


def join_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """`completion_logprobs` of several runs of chunks, as one."""
    return {key: [entry for part in parts for entry in part[key]] for key in completion_logprobs([])}


def chat_logprobs(chunks: list[_native.Chunk]) -> dict[str, Any]:
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


def report(request: _native.Request, verbose: bool) -> None:
    """Forward native logs; with verbose, print the call's timings as llama.cpp does."""
    flush_native_logs(verbose)
    if not verbose:
        return
    u = request.usage
    evaluated = u.prompt_tokens - u.cached_tokens
    pp = evaluated / (u.prompt_ms / 1000) if u.prompt_ms > 0 else 0.0
    gen = max(u.completion_tokens - 1, 0)
    tg = gen / (u.generation_ms / 1000) if u.generation_ms > 0 else 0.0
    print(
        f"llama_perf: prompt eval = {u.prompt_ms:.1f} ms / {evaluated} tokens ({pp:.1f} tok/s, "
        f"{u.cached_tokens} cached) | eval = {u.generation_ms:.1f} ms / {u.completion_tokens} "
        f"tokens ({tg:.1f} tok/s) | queued = {u.queued_ms:.1f} ms | finish = {request.finish_reason}",
        file=sys.stderr,
    )
