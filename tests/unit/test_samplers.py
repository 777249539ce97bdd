"""DRY, XTC and top-n-sigma: llama.cpp's own samplers, as fields and per call, each shown to do what it is for;
and the repetition penalties, applied outside llama.cpp's chain, giving what its chain gives."""

from __future__ import annotations

import math
from typing import Any

import pytest
from langchain_core.messages import HumanMessage

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native

LOOP = "I love you. I love you. I love you."


def _llm(path: str, **kwargs: Any) -> LlamaCpp:
    settings: dict[str, Any] = {"n_ctx": 1024, "n_seq": 1, "temperature": 0, "repeat_penalty": 1.0, "seed": 1}
    return LlamaCpp(model_path=path, **{**settings, **kwargs})


def test_dry_breaks_a_repetition_loop(smollm_path: str) -> None:
    llm = _llm(smollm_path, max_tokens=40)
    plain = llm.invoke(LOOP)
    assert plain.count("I love you.") >= 8  # greedy decoding falls into the loop
    per_call = llm.invoke(LOOP, dry_multiplier=0.8)
    assert per_call.count("I love you.") <= 2
    # The same as a field, and in the chat class.
    assert _llm(smollm_path, max_tokens=40, dry_multiplier=0.8).invoke(LOOP) == per_call
    chat = ChatLlamaCpp(model_path=smollm_path, n_ctx=1024, n_seq=1, temperature=0, max_tokens=32)
    prompt = [HumanMessage("Repeat this forever: " + LOOP)]
    plain_reply = str(chat.invoke(prompt).content)
    assert str(chat.invoke(prompt, dry_multiplier=3.0, dry_allowed_length=1).content) != plain_reply


def test_dry_allowed_length_and_breakers_reach_the_sampler(smollm_path: str) -> None:
    llm = _llm(smollm_path, max_tokens=40, dry_multiplier=0.8)
    default = llm.invoke(LOOP)
    # Repeats up to 64 tokens long go unpenalized: the loop is back.
    assert llm.invoke(LOOP, dry_allowed_length=64).count("I love you.") >= 8
    assert default.count("I love you.") <= 2
    # A space ends every repeated sequence: none is longer than a word, so none is penalized.
    assert llm.invoke(LOOP, dry_sequence_breakers=[" "]).count("I love you.") >= 8
    with pytest.raises(ValueError, match="dry_sequence_breakers"):
        llm.invoke(LOOP, dry_sequence_breakers=["x"] * 33)
    with pytest.raises(ValueError, match="dry_sequence_breakers"):
        LlamaCpp(model_path=smollm_path, dry_sequence_breakers=["x"] * 33)


def _first_token_probs(path: str, prompt: str) -> list[float]:
    """Softmax of the model's logits after `prompt`, by the low-level API."""
    model = native.load_model(path)
    engine = native.create_engine(model, n_ctx=256, n_seq=1)
    logits = engine.evaluate(0, list(model.tokenize(prompt, add_special=True)))[-1]
    engine.kv_remove(0, 0)
    top = max(logits)
    weights = [math.exp(x - top) for x in logits]
    total = sum(weights)
    return [w / total for w in weights]


def test_xtc_excludes_the_top_choices(smollm_path: str) -> None:
    prompt = "My favourite colour is"
    probs = _first_token_probs(smollm_path, prompt)
    ranked = sorted(range(len(probs)), key=lambda t: -probs[t])
    # The top n choices with a clear gap below the nth: XTC's threshold goes in that gap, and with certainty
    # XTC removes all of them but the least likely, the nth.
    n = next(n for n in range(2, 12) if probs[ranked[n - 1]] > 1.2 * probs[ranked[n]])
    threshold = (probs[ranked[n - 1]] + probs[ranked[n]]) / 2
    wide_open = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 1}
    llm = _llm(smollm_path, **wide_open)

    def first_token(**options: Any) -> int:
        info = llm.generate([prompt], logprobs=0, **options).generations[0][0].generation_info
        assert info is not None
        return int(info["logprobs"]["token_ids"][0])

    assert first_token() == ranked[0]
    assert first_token(xtc_probability=1.0, xtc_threshold=threshold) == ranked[n - 1]
    assert first_token(xtc_probability=0.0, xtc_threshold=threshold) == ranked[0]  # never applied
    as_field = _llm(smollm_path, xtc_probability=1.0, xtc_threshold=threshold, **wide_open)
    info = as_field.generate([prompt], logprobs=0).generations[0][0].generation_info
    assert info is not None and info["logprobs"]["token_ids"][0] == ranked[n - 1]


def test_top_n_sigma_keeps_only_the_top_logits(smollm_path: str) -> None:
    # At a high temperature with every other cut off, sampling wanders; a cut 0.001 standard deviations below
    # the top logit keeps only the top token, whatever the temperature: greedy decoding again.
    hot = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 12}
    prompt = "Once upon a time"
    greedy = _llm(smollm_path, max_tokens=12).invoke(prompt)
    llm = _llm(smollm_path, **hot)
    assert llm.invoke(prompt, seed=1) != greedy
    assert llm.invoke(prompt, seed=1, top_n_sigma=0.001) == greedy
    assert _llm(smollm_path, top_n_sigma=0.001, seed=2, **hot).invoke(prompt) == greedy


PENALTIES = [
    {"repeat_penalty": 1.3},
    {"repeat_penalty": 1.5, "frequency_penalty": 0.4, "presence_penalty": 0.3, "last_n_tokens_size": 8},
    {"repeat_penalty": 0.8},  # below 1 favours repeating
    {"repeat_penalty": 1.0, "frequency_penalty": 0.7},
]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
@pytest.mark.parametrize("penalties", PENALTIES, ids=lambda p: "-".join(f"{k}={v}" for k, v in p.items()))
def test_penalties_give_what_llamacpps_chain_gives(
    smollm_path: str, penalties: dict[str, Any], temperature: float
) -> None:
    """The engine applies the penalties to the window's tokens only; a finite logit bias (0.0 changes no logit)
    makes it leave them in llama.cpp's chain, where they come after the bias: both must give the same text."""
    llm = _llm(smollm_path, max_tokens=48, ignore_eos=True, temperature=temperature, seed=3, **penalties)
    prompt = "The old lighthouse keeper climbed the stairs and"
    ours = llm.invoke(prompt)
    chains = llm.invoke(prompt, logit_bias={50: 0.0})
    assert ours == chains
    plain = _llm(smollm_path, max_tokens=48, ignore_eos=True, temperature=temperature, seed=3)
    assert ours != plain.invoke(prompt)  # the penalties did something
