"""Speculative decoding on the tiny random-weight model (fast; the real pair is in tests/integration)."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_llamacpp import LlamaCpp, native

# The same model as its own draft guesses every greedy token. Random weights never repeat the prompt on
# their own: for prompt lookup, a grammar makes the answer repeat it (the model still picks the tokens).
PROMPT = "one two three four five six seven eight nine ten " * 4
REPEAT = 'root ::= ("one two three four five six seven eight nine ten ")+'


def _generate(llm: LlamaCpp, **kwargs: Any) -> tuple[str, list[float], dict[str, Any]]:
    gen = llm.generate([PROMPT], **kwargs).generations[0][0]
    info = gen.generation_info or {}
    return gen.text, info["logprobs"]["token_logprobs"], info


@pytest.mark.parametrize("source", ["lookup", "draft"])
def test_speculation_gives_plain_decoding_token_for_token(tiny_model_path: str, source: str) -> None:
    common: dict[str, Any] = {
        "model_path": tiny_model_path,
        "temperature": 0,
        "max_tokens": 64,
        "ignore_eos": True,
        "batch_invariant": True,
        "logprobs": 1,
        "n_ctx": 512,
    }
    spec_kw: dict[str, Any] = (
        {"prompt_lookup": True, "draft_min": 4} if source == "lookup" else {"draft_model_path": tiny_model_path}
    )
    if source == "lookup":
        common["grammar"] = REPEAT
        common.pop("ignore_eos")  # the grammar may end: the end is the model's
    text, logprobs, _ = _generate(LlamaCpp(**common))
    spec = LlamaCpp(draft_max=4, **spec_kw, **common)
    if source == "draft":
        spec.draft_min = 4
    text2, logprobs2, info = _generate(spec)
    assert (text2, logprobs2) == (text, logprobs)
    assert info["draft_n"] > 0
    if source == "draft":  # the model drafting for itself: every guess right
        assert info["draft_n_accepted"] == info["draft_n"]
    else:
        assert info["draft_n_accepted"] >= 8


def test_sampling_with_a_seed_draws_the_same_text(tiny_model_path: str) -> None:
    common: dict[str, Any] = {
        "model_path": tiny_model_path,
        "temperature": 1.0,
        "seed": 7,
        "max_tokens": 48,
        "ignore_eos": True,
        "batch_invariant": True,
        "n_ctx": 512,
    }
    plain = LlamaCpp(**common).invoke(PROMPT)
    assert LlamaCpp(draft_model_path=tiny_model_path, draft_min=3, **common).invoke(PROMPT) == plain


def test_drafts_respect_max_tokens_stop_strings_and_the_context(tiny_model_path: str) -> None:
    common: dict[str, Any] = {"model_path": tiny_model_path, "temperature": 0, "ignore_eos": True, "n_ctx": 256}
    plain = LlamaCpp(**common)
    spec = LlamaCpp(draft_model_path=tiny_model_path, draft_min=8, draft_max=8, **common)
    # A stop string from inside the tenth token into the eleventh: the second draft of 8 runs past it.
    full = plain.generate([PROMPT], max_tokens=16, logprobs=0).generations[0][0]
    start = len("".join((full.generation_info or {})["logprobs"]["tokens"][:9])) + 1
    stop = full.text[start : start + 4]
    cases: list[dict[str, Any]] = [
        {"max_tokens": 5},
        {"max_tokens": 7},
        {"max_tokens": None},  # until the context is full
        {"max_tokens": 16, "stop": [stop]},
    ]
    for kwargs in cases:
        a = plain.generate([PROMPT], **kwargs).generations[0][0]
        b = spec.generate([PROMPT], **kwargs).generations[0][0]
        assert b.text == a.text
        a_info, b_info = a.generation_info or {}, b.generation_info or {}
        assert b_info["usage"]["completion_tokens"] == a_info["usage"]["completion_tokens"]
        assert b_info["finish_reason"] == a_info["finish_reason"] == ("stop" if "stop" in kwargs else "length")
    assert b.text == full.text[: full.text.index(stop)]  # the text before the stop string, nothing drafted after it
    # The KV cache holds exactly what was accepted: the next call reuses it as plain decoding's would.
    follow = spec.generate([PROMPT + "x"], max_tokens=4).generations[0][0]
    assert (follow.generation_info or {})["usage"]["cached_tokens"] > 0


def test_speculation_settings_are_checked(tiny_model_path: str, vocab_path: str) -> None:
    with pytest.raises(ValueError, match="draft_min"):
        LlamaCpp(model_path=tiny_model_path, prompt_lookup=True, draft_min=5, draft_max=2)
    model = native.load_model(tiny_model_path)
    params = native.EngineParams()
    params.prompt_lookup = True
    params.draft_max = 0
    with pytest.raises(ValueError, match="draft_max"):
        native.Engine.create(model, params)
    params.draft_max = native.MAX_DRAFT_TOKENS + 1  # refused, not cut to what a step holds
    with pytest.raises(ValueError, match=f"draft_max <= {native.MAX_DRAFT_TOKENS} "):
        native.Engine.create(model, params)
    params.draft_max = 4
    params.embeddings = True
    with pytest.raises(ValueError, match="not embeddings"):
        native.Engine.create(model, params)
    draft = native.load_model(vocab_path, vocab_only=True)
    params.embeddings = False
    with pytest.raises(ValueError, match=r"vocab_only|vocabulary"):
        native.Engine.create(model, params, draft)
