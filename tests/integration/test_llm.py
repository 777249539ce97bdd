"""LlamaCpp on a real model (Gemma 3 270M, a base model)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompts import PromptTemplate

from langchain_llamacpp import LlamaCpp, native
from tests.concurrency import call_from_threads, collect_counting_loop_ticks, text_and_logprobs

PROMPT = "The three most famous landmarks in Paris are"


@pytest.fixture(scope="module")
def llm(gemma_path: str) -> LlamaCpp:
    return LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=48, n_seq=4, seed=3)


def test_stream_joined_equals_invoke(llm: LlamaCpp) -> None:
    text = llm.invoke(PROMPT)
    assert len(text) > 40
    pieces = list(llm.stream(PROMPT))
    assert len(pieces) > 10
    assert "".join(pieces) == text


async def test_astream_joined_equals_ainvoke(llm: LlamaCpp) -> None:
    text = await llm.ainvoke(PROMPT)
    assert "".join([p async for p in llm.astream(PROMPT)]) == text == llm.invoke(PROMPT)


def test_prompt_template_chain(llm: LlamaCpp) -> None:
    chain = PromptTemplate.from_template("Question: {question}\nAnswer:") | llm.bind(stop=["\n"])
    answer = chain.invoke({"question": "What is the capital of France?"})
    assert "Paris" in answer
    assert "\n" not in answer


def test_json_grammar_output_parses(gemma_path: str) -> None:
    llm = LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=200, grammar_path="json")
    text = llm.invoke("Describe a cat as a JSON object with name, age and color:")
    data = json.loads(text)
    assert isinstance(data, dict) and data


def test_list_grammar_output(gemma_path: str) -> None:
    llm = LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=60, grammar_path="list")
    text = llm.invoke("Fruits:\n")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("- ") for line in lines)


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings(llm: LlamaCpp, stream: bool) -> None:
    full = llm.invoke(PROMPT)
    words = full.split()
    stop = words[len(words) // 2]
    # The model writes all of `diverging` but its last character: the engine holds the word back until
    # the text goes another way, then releases it. (tests/unit/test_engine.py checks after each token.)
    diverging = stop + "\u2603"
    assert diverging not in full
    if stream:
        assert "".join(llm.stream(PROMPT, stop=[stop])) == full[: full.index(stop)]
        assert "".join(llm.stream(PROMPT, stop=[diverging])) == full
        return
    stopped = llm.generate([PROMPT], stop=[stop]).generations[0][0]
    assert stopped.text == full[: full.index(stop)]
    assert stopped.generation_info is not None
    assert (stopped.generation_info["finish_reason"], stopped.generation_info["stop"]) == ("stop", stop)
    diverged = llm.generate([PROMPT], stop=[diverging]).generations[0][0]
    assert diverged.text == full
    assert diverged.generation_info is not None and "stop" not in diverged.generation_info


def test_callbacks_fire_per_token(gemma_path: str) -> None:
    tokens: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            tokens.append(token)

    llm = LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=20, callbacks=[Recorder()])
    text = llm.invoke(PROMPT)
    assert len(tokens) >= 15
    assert "".join(tokens) == text


def test_multibyte_text_is_never_split(llm: LlamaCpp) -> None:
    prompt = "Translate to Japanese and add emojis 🎉🐍: Good morning, my friend! ->"
    pieces = list(llm.stream(prompt, max_tokens=40))
    assert all("\ufffd" not in p for p in pieces)  # no half character was ever released
    assert any(ord(ch) > 0x7F for p in pieces for ch in p)  # the output does have multi-byte text


def test_eight_threads_ten_calls_each(gemma_path: str) -> None:
    # One slot: calls from all threads are queued to the engine. Which prefix the slot has cached
    # depends on the order the threads come in, and evaluating 1 token or 8 on top of it takes
    # different kernels (gemv vs gemm), so without batch_invariant a near-tie at temperature 0 can
    # flip (CI saw the first prompt's answer change); with it, every order gives the same bits.
    llm = LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=12, seed=3, batch_invariant=True)
    prompts = [f"Fact number {i} about the ocean:" for i in range(10)]
    expected = [llm.invoke(p, max_tokens=12) for p in prompts]
    assert call_from_threads(llm.invoke, prompts, n_threads=8) == [expected] * 8


def test_batch_invariant_concurrent_calls_equal_one_at_a_time_bit_for_bit(gemma_path: str) -> None:
    # The same calls as above, decoded together (n_seq=4): with batch_invariant, text and logprobs
    # equal those of calls made one at a time on a fresh single-slot engine.
    # (Without it, on this machine 56 of 80 such calls came out differently.)
    def runner(n_seq: int) -> Callable[[str], str]:
        return text_and_logprobs(
            LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=12, n_seq=n_seq, batch_invariant=True, logprobs=1)
        )

    prompts = [f"Fact number {i} about the ocean:" for i in range(6)]
    expected = [runner(1)(p) for p in prompts]
    run = runner(4)
    assert call_from_threads(run, prompts, n_threads=6) == [expected] * 6


async def test_astream_leaves_event_loop_free(llm: LlamaCpp) -> None:
    pieces, ticks = await collect_counting_loop_ticks(llm.astream(PROMPT), 0.005)
    assert len(pieces) > 10 and ticks > 10


def test_generation_info_and_usage(llm: LlamaCpp) -> None:
    result = llm.generate([PROMPT, "Once upon a time"], max_tokens=8, logprobs=2)
    for generations in result.generations:
        info = generations[0].generation_info
        assert info is not None
        assert info["finish_reason"] == "length"
        assert len(info["logprobs"]["token_logprobs"]) == 8
    assert result.llm_output is not None
    assert result.llm_output["token_usage"]["completion_tokens"] == 16


def test_verbose_false_is_silent_on_a_real_model(gemma_path: str) -> None:
    code = (
        "from langchain_llamacpp import LlamaCpp\n"
        f"llm = LlamaCpp(model_path={gemma_path!r}, temperature=0, max_tokens=5)\n"
        "llm.invoke('Hello'); list(llm.stream('Hello'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_fill_in_the_middle_with_suffix(qwen_path: str) -> None:
    llm = LlamaCpp(model_path=qwen_path, temperature=0, max_tokens=24, stop=["\n\n"])
    middle = llm.invoke("def add(a, b):\n    ", suffix="\n\nprint(add(1, 2))\n")
    assert "return" in middle and "a + b" in middle.replace("a+b", "a + b")


def test_suffix_needs_a_fim_model(gemma_path: str) -> None:
    with pytest.raises(ValueError, match="fill-in-the-middle"):
        LlamaCpp(model_path=gemma_path, max_tokens=4).invoke("def f():", suffix="return 1")


def test_embeddings_rank_related_texts_higher(smollm_path: str) -> None:
    from langchain_llamacpp import LlamaCppEmbeddings

    embeddings = LlamaCppEmbeddings(model_path=smollm_path)
    query = embeddings.embed_query("How do cats behave?")
    docs = embeddings.embed_documents(["Cats are curious animals that sleep a lot.", "The stock market fell today."])
    scores = [sum(a * b for a, b in zip(query, d, strict=True)) for d in docs]
    assert scores[0] > scores[1]


def _cached(llm: LlamaCpp, prompt: str) -> tuple[str, int]:
    generation = llm.generate([prompt]).generations[0][0]
    assert generation.generation_info is not None
    return generation.text, generation.generation_info["usage"]["cached_tokens"]


def test_sliding_window_cache_reuses_a_prefix_only_while_its_window_is_cached(gemma_path: str) -> None:
    # Gemma 3 attends over a 512-token window in 5 of its 6 layers, and those layers keep only that
    # window in their cache. A prompt may reuse a prefix only if the window before its end is still there.
    # One slot: with 8, llama.cpp sizes the window cache for 8 windows, n_ctx cells here, and drops nothing.
    llm = LlamaCpp(model_path=gemma_path, temperature=0, max_tokens=6, n_ctx=2048, n_batch=256, seed=3, n_seq=1)
    engine = llm.load()
    engine.clear_cache()
    text = " ".join(f"Line {i}: the tide rises and falls." for i in range(110))
    n_text = len(engine.model.tokenize(text))
    assert n_text > 1000
    _, cached = _cached(llm, text)
    assert cached == 0

    # A follow-up that extends the prompt (the next turn of a conversation) reuses all of it.
    _, cached = _cached(llm, text + " Line 110:")
    assert cached >= n_text - 2

    # Branching near the start, long after the window there was dropped: evaluated from scratch,
    # with the output of a cold start.
    early = text[:120] + " Then the storm came and"
    branched, cached = _cached(llm, early)
    assert cached == 0
    engine.clear_cache()
    assert branched == llm.invoke(early)

    # Branching late, within the cached window, reuses the prefix.
    _cached(llm, text)
    _, cached = _cached(llm, text[: len(text) * 9 // 10] + " Then the storm came and")
    assert cached > n_text * 8 // 10


def test_resubmitting_after_cancel_reuses_the_cancelled_slot(gemma_path: str) -> None:
    # "Regenerate": the cancelled request's slot is freed before the next request picks a slot, so
    # the prompt is not evaluated again in the empty one. (The race needs real decode steps: the
    # new request arrives while the engine is still computing the cancelled one's step.)
    engine = LlamaCpp(model_path=gemma_path, n_seq=2, n_ctx=1024).load()
    engine.clear_cache()
    params = native.RequestParams()
    params.prompt = engine.model.tokenize("The quick brown fox jumps over the lazy dog. " * 20)
    params.max_tokens = 100
    evaluated = []
    for _ in range(4):
        request = engine.submit(params)
        assert request.next() is not None
        request.cancel()
        evaluated.append(engine.stats().prompt_tokens_evaluated)
    # Each resubmission evaluates only the prompt's last token (for its logits): the prefix comes from the
    # cancelled request's slot, taken over or shared with the other slot, never evaluated again.
    assert [b - a for a, b in itertools.pairwise(evaluated)] == [1, 1, 1]


def test_fillers_leave_an_idle_sliding_window_conversation_intact(gemma_path: str) -> None:
    # Requests in slots 0 and 2 decode together with a filler token in idle slot 1 each step. Slot 1
    # holds a conversation longer than its sliding-window cache, which recycles cells: its follow-up
    # must still reuse the whole prefix and give what a fresh engine gives (batch_invariant: exact).
    common: dict[str, Any] = {"model_path": gemma_path, "temperature": 0, "n_ctx": 2048, "batch_invariant": True}
    llm = LlamaCpp(n_seq=3, max_tokens=48, **common)
    engine = llm.load()
    engine.clear_cache()
    texts = [" ".join(f"Line {i}: the {word} rises and falls." for i in range(110)) for word in ("tide", "sun", "wind")]
    for text in texts:
        llm.invoke(text, max_tokens=1)
    assert [engine.slot_tokens(i)[-3:] for i in range(3)] == [engine.model.tokenize(t)[-3:] for t in texts]
    idle = engine.slot_tokens(1)
    assert len(idle) > 1100  # beyond the window cache of 512 + 512 cells
    fillers = engine.stats().fillers
    llm.generate([texts[0] + " Line 110:", texts[2] + " Line 110:"])
    assert engine.stats().fillers - fillers >= 40
    assert engine.slot_tokens(1) == idle
    follow_up = texts[1] + " Line 110:"
    reused, cached = _cached(llm, follow_up)
    assert cached >= len(idle) - 1
    assert reused == LlamaCpp(n_seq=1, max_tokens=48, **common).invoke(follow_up)


def test_batch_invariant_guesses_are_exact(gemma_path: str) -> None:
    # Alone, a batch-invariant request guesses its next token in the second row it needs anyway
    # (text that repeats its context guesses right often); decoded beside another request (hardly
    # any guessing), it gives the same tokens and logprobs.
    llm = LlamaCpp(
        model_path=gemma_path, temperature=0, max_tokens=48, n_seq=2, batch_invariant=True, logprobs=1, ignore_eos=True
    )
    engine = llm.load()
    engine.clear_cache()
    prompt = " ".join(f"Line {i}: the tide rises and falls." for i in range(30))
    alone = text_and_logprobs(llm)(prompt)
    accepted = engine.stats().guesses_accepted
    assert accepted >= 10
    engine.clear_cache()
    together = llm.generate([prompt, "Once upon a time"]).generations[0][0]
    assert together.generation_info is not None
    assert together.text + repr(together.generation_info["logprobs"]["token_logprobs"]) == alone
    assert engine.stats().guesses_accepted - accepted < accepted // 2  # (a step or two may run alone)
