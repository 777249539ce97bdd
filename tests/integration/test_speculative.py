"""Speculative decoding: drafts from prompt lookup or a draft model never change what the model says.

The pair of real models: Qwen2.5-Coder-1.5B-Instruct (target) and Qwen2.5-Coder-0.5B-Instruct (draft),
which share their vocabulary. `batch_invariant` makes a k-token verification batch round exactly as
one-token steps do, so equality is token for token, logprobs included. `draft_min` forces drafting,
which the cost model would otherwise stop on this compute-bound CPU.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp
from tests import models
from tests.texts import CODE, chatml, code_edit

EDIT = chatml(code_edit(CODE))


@pytest.fixture(scope="module")
def qwen15_path() -> str:
    try:
        return str(models.get("qwen15"))
    except Exception as e:  # CI must have it
        pytest.fail(f"could not fetch the qwen15 test model: {e}")


def _text_and_logprobs(llm: LlamaCpp, prompt: str, **kwargs: Any) -> tuple[str, list[float], dict[str, Any]]:
    gen = llm.generate([prompt], **kwargs).generations[0][0]
    info = gen.generation_info or {}
    return gen.text, info["logprobs"]["token_logprobs"], info


def test_prompt_lookup_output_is_plain_decoding_token_for_token(qwen_path: str) -> None:
    common: dict[str, Any] = {
        "model_path": qwen_path,
        "temperature": 0,
        "max_tokens": 160,
        "batch_invariant": True,
        "logprobs": 1,
        "n_ctx": 1024,
    }
    text, logprobs, info = _text_and_logprobs(LlamaCpp(**common), EDIT)
    assert "draft_n" not in info  # no speculation, no counts
    # A fixed draft length (min = max): what is drafted depends on the text only, not on the measured step
    # times the cost model reads, so the counts below are the same on every machine and run.
    spec = LlamaCpp(prompt_lookup=True, draft_min=4, draft_max=4, **common)
    text2, logprobs2, info2 = _text_and_logprobs(spec, EDIT)
    assert text2 == text
    assert logprobs2 == logprobs
    assert "acc" in text
    # The edit repeats most of the code: most drafted tokens are right.
    assert info2["draft_n"] >= 40
    assert info2["draft_n_accepted"] >= 0.6 * info2["draft_n"]


def test_draft_model_output_is_plain_decoding_token_for_token(qwen_path: str, qwen15_path: str) -> None:
    common: dict[str, Any] = {
        "model_path": qwen15_path,
        "temperature": 0,
        "max_tokens": 120,
        "batch_invariant": True,
        "logprobs": 1,
        "n_ctx": 1024,
    }
    text, logprobs, _ = _text_and_logprobs(LlamaCpp(**common), EDIT)
    spec = LlamaCpp(draft_model_path=qwen_path, draft_min=4, draft_max=4, **common)  # fixed: see above
    text2, logprobs2, info = _text_and_logprobs(spec, EDIT)
    assert text2 == text
    assert logprobs2 == logprobs
    assert info["draft_n"] >= 40
    assert info["draft_n_accepted"] >= 0.6 * info["draft_n"]  # the bar for a code edit


def test_sampling_with_drafts_draws_what_plain_decoding_draws(qwen_path: str) -> None:
    # Each token is sampled from the model's own logits at its position, with one draw of the seeded
    # generator per token as without drafts: the same seed gives the same text.
    common: dict[str, Any] = {
        "model_path": qwen_path,
        "temperature": 0.9,
        "seed": 1234,
        "max_tokens": 120,
        "batch_invariant": True,
        "n_ctx": 1024,
    }
    plain = LlamaCpp(**common).invoke(EDIT)
    spec = LlamaCpp(prompt_lookup=True, draft_min=3, **common)
    gen = spec.generate([EDIT]).generations[0][0]
    assert gen.text == plain
    assert (gen.generation_info or {})["draft_n"] > 0


def test_drafts_inside_continuous_batching(qwen_path: str) -> None:
    # Several requests decoded together, each verifying its own draft in the same steps.
    prompts = [
        EDIT,
        EDIT.replace("`total` to `acc`", "`values` to `xs`"),
        "<|im_start|>user\nWrite a haiku about rivers.<|im_end|>\n<|im_start|>assistant\n",
    ]
    common: dict[str, Any] = {
        "model_path": qwen_path,
        "temperature": 0,
        "max_tokens": 100,
        "batch_invariant": True,
        "n_ctx": 1024,
    }
    alone = [LlamaCpp(**common).invoke(p) for p in prompts]
    spec = LlamaCpp(prompt_lookup=True, draft_min=2, n_seq=3, **common)
    engine = spec.load()
    before = engine.stats()
    result = spec.generate(prompts)
    after = engine.stats()
    assert [g[0].text for g in result.generations] == alone
    assert sum((g[0].generation_info or {})["draft_n_accepted"] for g in result.generations) >= 40
    # A step that decodes one request gives it one sampled token plus the drafts it accepts (batch-invariant
    # guesses included), so decoded one at a time these answers would take at least this many steps; here
    # about 85 against 107 (one at a time: 101 against 99). Not the largest batch: one prompt fills it.
    completion = sum((g[0].generation_info or {})["usage"]["completion_tokens"] for g in result.generations)
    one_at_a_time = completion - (after.drafts_accepted - before.drafts_accepted)
    assert after.steps - before.steps < one_at_a_time


def test_default_engine_with_prompt_lookup_serves_concurrent_calls(qwen_path: str) -> None:
    # The default engine (a shared KV pool, 8 slots): drafts are checked and dropped inside the pool
    # while other requests run; each answer is complete and the pool is left consistent.
    llm = LlamaCpp(model_path=qwen_path, temperature=0, max_tokens=200, prompt_lookup=True, draft_min=2, n_ctx=2048)
    prompts = [EDIT, EDIT.replace("`total` to `acc`", "`m` to `mu`")] * 2
    results: list[str] = [""] * len(prompts)

    def call(i: int) -> None:
        results[i] = llm.invoke(prompts[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # (Not token for token: without batch_invariant, batches of different sizes round differently.)
    assert all("def mean" in r for r in results), results
    assert llm.load().stats().drafts_accepted >= 40
    # A follow-up turn reuses the cache that the drafts passed through (refused drafts left no cells).
    follow_up = prompts[0] + results[0] + "<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n<|im_start|>assistant\n"
    again = llm.generate([follow_up]).generations[0][0]
    assert (again.generation_info or {})["usage"]["cached_tokens"] > 150


def test_chat_model_reports_drafts(qwen_path: str) -> None:
    chat = ChatLlamaCpp(model_path=qwen_path, temperature=0, max_tokens=100, prompt_lookup=True, draft_min=2)
    prompt = code_edit(CODE)
    message = chat.invoke([HumanMessage(prompt)])
    assert message.response_metadata["draft_n"] > 0
    assert 0 < message.response_metadata["draft_n_accepted"] <= message.response_metadata["draft_n"]
    chunks = list(chat.stream([HumanMessage(prompt)]))
    final = chunks[-1].response_metadata
    assert final["draft_n_accepted"] > 0


def test_draft_model_errors_name_the_problem(qwen_path: str, gemma_path: str, tmp_path: Any) -> None:
    with pytest.raises(FileNotFoundError, match="draft model file not found"):
        LlamaCpp(model_path=qwen_path, draft_model_path=str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="draft_min"):
        LlamaCpp(model_path=qwen_path, prompt_lookup=True, draft_min=8, draft_max=4)
    with pytest.raises(ValueError, match=r"vocabulary|tokenizer"):
        LlamaCpp(model_path=qwen_path, draft_model_path=gemma_path, max_tokens=4).invoke("Hi")
