"""The engine's scheduling on a tiny random-weight model: slots, the shared KV pool, prefix reuse and
sharing, fillers, batch-invariant decoding."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_llamacpp import _native, native
from tests.concurrency import call_from_threads, text_and_logprobs
from tests.tiny_model import greedy_llm


def test_prompt_cache_reuses_prefix(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=4, n_seq=2)
    engine = llm.load()
    prefix = "The quick brown fox jumps over the lazy dog. " * 5
    llm.invoke(prefix + "First")
    reused = engine.stats().prompt_tokens_reused
    result = llm.generate([prefix + "Second"])
    info = result.generations[0][0].generation_info
    assert info is not None and info["usage"]["cached_tokens"] >= 50
    assert engine.stats().prompt_tokens_reused - reused >= 50


def _cache_three_conversations(engine: native.Engine) -> list[str]:
    """Slots 0, 1 and 2 of a cleared engine each hold a short text; returns the texts."""
    engine.clear_cache()
    texts = ["Alpha beta gamma delta", "One two three four", "Red green blue yellow"]
    for slot, text in enumerate(texts):
        engine.evaluate(slot, engine.model.tokenize(text))
    return texts


def test_requests_in_slots_apart_decode_together(tiny_model_path: str) -> None:
    # With a KV cache per slot (kv_unified=0), llama.cpp computes a step's sequences together only if
    # their ids are consecutive: with slot 1 idle between busy slots 0 and 2, a filler token bridges it
    # and is removed after the step.
    llm = greedy_llm(
        tiny_model_path, max_tokens=64, n_seq=3, n_ctx=512, ignore_eos=True, model_kwargs={"kv_unified": 0}
    )
    engine = llm.load()
    texts = _cache_three_conversations(engine)
    idle = engine.slot_tokens(1)
    (idle_logits,) = engine.evaluate(1, [100])
    engine.kv_remove(1, len(idle))
    fillers = engine.stats().fillers
    together = llm.generate([texts[0] + " and", texts[2] + " and"])
    assert engine.stats().fillers - fillers >= 20  # (the second request may start a few steps late)
    assert engine.slot_tokens(1) == idle  # the idle conversation is untouched...
    assert engine.evaluate(1, [100])[0] == pytest.approx(idle_logits, abs=1e-4)  # ...and so is its cache
    assert [g[0].text for g in together.generations] == [llm.invoke(texts[0] + " and"), llm.invoke(texts[2] + " and")]


def test_slots_apart_share_steps_in_the_unified_pool(tiny_model_path: str) -> None:
    # In one pool (the default) any set of sequences is one pass: no fillers, and the idle slot between
    # the busy ones keeps its cache.
    llm = greedy_llm(tiny_model_path, max_tokens=64, n_seq=3, n_ctx=512, ignore_eos=True)
    engine = llm.load()
    assert engine.kv_unified and engine.n_ctx_total == engine.n_ctx == 512
    texts = _cache_three_conversations(engine)
    idle = engine.slot_tokens(1)
    before = engine.stats()
    together = llm.generate([texts[0] + " and", texts[2] + " and"])
    after = engine.stats()
    assert after.fillers == before.fillers
    # Decoded together: one after the other, two answers of 64 tokens take at least 128 steps.
    # (Not the largest batch: that counts since the engine was made, and prompt tokens too.)
    assert after.steps - before.steps < 96
    assert engine.slot_tokens(1) == idle
    assert [g[0].text for g in together.generations] == [llm.invoke(texts[0] + " and"), llm.invoke(texts[2] + " and")]


def _usage_side_by_side(engine: native.Engine, prompts: list[str], max_tokens: int) -> list[native.Usage]:
    """The usage of each prompt's greedy request, all submitted at once."""
    requests = []
    for text in prompts:
        params = native.RequestParams()
        params.prompt = engine.model.tokenize(text)
        params.max_tokens, params.ignore_eos, params.sampling.temperature = max_tokens, True, 0.0
        requests.append(engine.submit(params))
    for request in requests:
        request.wait()
    return [request.usage for request in requests]


def test_a_full_pool_makes_requests_wait_not_truncate(tiny_model_path: str) -> None:
    # Two requests that each may fill most of the pool: the second waits for the first to end, and
    # both come out whole, as they would one after the other.
    llm = greedy_llm(tiny_model_path, max_tokens=180, n_seq=2, n_ctx=256, ignore_eos=True)
    engine = llm.load()
    prompts = ["Alpha beta gamma", "Red green blue"]
    expected = [llm.invoke(p) for p in prompts]
    assert llm.batch(prompts) == expected
    first, second = _usage_side_by_side(engine, prompts, max_tokens=180)
    assert second.queued_ms >= 0.9 * (first.queued_ms + first.prompt_ms + first.generation_ms)  # waited
    for text, generation in zip(expected, llm.generate(prompts).generations, strict=True):
        assert generation[0].text == text
        assert generation[0].generation_info is not None
        assert generation[0].generation_info["finish_reason"] == "length"
    # Short requests fit side by side; one longer than the pool is refused at once.
    first, second = _usage_side_by_side(engine, prompts, max_tokens=8)
    assert second.queued_ms < first.queued_ms + first.prompt_ms + first.generation_ms  # side by side
    with pytest.raises(ValueError, match="exceeds the context"):
        greedy_llm(tiny_model_path, max_tokens=300, n_seq=2, n_ctx=256).invoke("hi")


def test_idle_conversations_give_way_least_recently_used_first(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=4, n_seq=3, n_ctx=256)
    engine = llm.load()
    engine.clear_cache()
    model = engine.model
    old, recent = model.tokenize("old conversation " * 30), model.tokenize("recent conversation " * 30)
    engine.evaluate(1, old)
    engine.evaluate(0, recent)
    # Fits beside both: nothing goes.
    llm.invoke("new request " * 5, max_tokens=8)
    assert engine.cached_prompts()[:2] == [recent, old]
    # Needs more than the pool has free: the least recently used cache goes, the others stay.
    llm.invoke("new request " * 20, max_tokens=120)
    caches = engine.cached_prompts()
    assert caches[0] == recent and caches[1] == []


def test_more_sequences_than_n_batch(tiny_model_path: str) -> None:
    # n_batch=8 is the old bindings' default; every generating slot still decodes in each step.
    llm = greedy_llm(tiny_model_path, max_tokens=12, n_seq=12, n_batch=8)
    assert llm.load().n_batch == 12
    prompts = [f"Prompt number {i}" for i in range(12)]
    expected = [llm.invoke(p) for p in prompts]
    assert llm.batch(prompts) == expected


def test_batch_invariant_outputs_are_bit_equal_under_concurrency(tiny_model_path: str) -> None:
    # Logprobs, not only tokens: without batch_invariant they differ in the last bits here.
    llm = greedy_llm(tiny_model_path, max_tokens=16, n_seq=4, batch_invariant=True, logprobs=1)
    run = text_and_logprobs(llm)
    prompts = [f"Prompt number {i}" for i in range(8)]
    fresh = text_and_logprobs(greedy_llm(tiny_model_path, max_tokens=16, n_seq=1, batch_invariant=True, logprobs=1))
    expected = [fresh(p) for p in prompts]
    assert [run(p) for p in prompts] == expected
    assert call_from_threads(run, prompts, n_threads=6) == [expected] * 6
    # A long prompt goes in several chunks, and a follow-up reuses the cached prefix.
    long = "The quick brown fox jumps over the lazy dog. " * 12
    small_batch = text_and_logprobs(
        greedy_llm(tiny_model_path, max_tokens=16, n_batch=16, batch_invariant=True, logprobs=1)
    )
    assert small_batch(long) == fresh(long)
    assert run(long + "Again") == fresh(long + "Again")


def test_batch_invariant_needs_its_kernels(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="repack=False"):
        greedy_llm(tiny_model_path, batch_invariant=True, model_kwargs={"repack": True}).load()
    with pytest.raises(ValueError, match="flash attention"):
        greedy_llm(tiny_model_path, batch_invariant=True, flash_attn=False).load()


def test_batch_invariant_low_level_evaluate(tiny_model_path: str) -> None:
    # The same tokens evaluated at once, or the last one on its own, give the same logits bit for bit.
    engine = greedy_llm(tiny_model_path, n_seq=2, batch_invariant=True).load()
    engine.clear_cache()
    tokens = engine.model.tokenize("The quick brown fox jumps over the lazy dog")
    (whole,) = engine.evaluate(0, tokens)
    engine.evaluate(1, tokens[:-1])
    (last,) = engine.evaluate(1, tokens[-1:])
    assert last == whole
    assert engine.slot_tokens(0) == engine.slot_tokens(1) == tokens


def test_fillers_and_prompt_chunks_share_a_small_n_batch(tiny_model_path: str) -> None:
    # Two long prompts in slots 0 and 2 fill n_batch; the filler for idle slot 1 takes a prompt
    # token's place (llama_decode aborts the process beyond n_batch). A KV cache per slot: fillers.
    llm = greedy_llm(
        tiny_model_path, max_tokens=40, n_seq=3, n_batch=8, n_ctx=256, ignore_eos=True, model_kwargs={"kv_unified": 0}
    )
    engine = llm.load()
    texts = ["alpha beta " * 30, "gamma delta " * 30, "epsilon zeta " * 30]
    prompts = [texts[0] + " more words here " * 10, texts[2] + " other words there " * 10]

    def warm() -> None:  # texts in slots 0, 1, 2
        engine.clear_cache()
        for slot, text in enumerate(texts):
            engine.evaluate(slot, engine.model.tokenize(text))

    warm()
    expected = [llm.invoke(p) for p in prompts]
    warm()
    fillers = engine.stats().fillers
    result = llm.generate(prompts)  # submitted together (batch() may finish one before the other starts)
    assert [g[0].text for g in result.generations] == expected
    assert engine.stats().fillers > fillers


def test_a_cached_prefix_is_shared_with_another_slot(tiny_model_path: str) -> None:
    # A prompt asked again (a retry, a regenerated answer) reuses the prefix that another slot holds,
    # without taking that slot's tail: in the unified pool the cells are shared, not copied.
    llm = greedy_llm(tiny_model_path, max_tokens=40, n_seq=4, n_ctx=512, ignore_eos=True)
    engine = llm.load()
    engine.clear_cache()
    prompt = "a question asked twice " * 8
    first = llm.generate([prompt]).generations[0][0]
    assert (first.generation_info or {})["usage"]["cached_tokens"] == 0
    held = [c for c in engine.cached_prompts() if c]
    assert len(held) == 1 and len(held[0]) > 40
    again = llm.generate([prompt]).generations[0][0]
    n_prompt = (again.generation_info or {})["usage"]["prompt_tokens"]
    assert (again.generation_info or {})["usage"]["cached_tokens"] == n_prompt - 1
    assert again.text == first.text
    caches = [c for c in engine.cached_prompts() if c]
    assert held[0] in caches and len(caches) == 2  # the first answer's tail is still there
    # Where the pool has no room beside it, the request takes that slot and its tail gives way.
    tight = greedy_llm(tiny_model_path, max_tokens=None, n_seq=4, n_ctx=256, ignore_eos=True)
    engine = tight.load()
    engine.clear_cache()
    tight.generate([prompt])  # fills the pool
    reused = tight.generate([prompt], max_tokens=4).generations[0][0]
    assert (reused.generation_info or {})["usage"]["cached_tokens"] == n_prompt - 1


# The step plan itself (native/step_plan.h): given these slots and this request, this plan. No model.


def _slots(*views: dict[str, Any]) -> list[_native._SlotView]:
    out = []
    for fields in views:
        view = _native._SlotView()
        for name, value in fields.items():
            setattr(view, name, value)
        out.append(view)
    return out


def test_plan_a_follow_up_lands_on_its_own_conversation() -> None:
    slots = _slots(
        {"cached": 100, "prefix": 0, "last_used": 1},
        {"cached": 80, "prefix": 79, "last_used": 2},  # this conversation, 79 tokens in common
        {"cached": 0},
    )
    plan = _native._plan_placement(slots, prompt=120, reserve=200, unified=False, pool=0)
    assert (plan.slot, plan.prefix, plan.donor, plan.evict) == (1, 79, -1, [])


def test_plan_an_unrelated_prompt_takes_an_empty_slot_then_the_least_recently_used() -> None:
    cached = _slots({"cached": 50, "last_used": 3}, {"cached": 0}, {"cached": 50, "last_used": 2})
    assert _native._plan_placement(cached, prompt=10, reserve=20, unified=False, pool=0).slot == 1
    full = _slots({"cached": 50, "last_used": 3}, {"cached": 50, "last_used": 1}, {"cached": 50, "last_used": 2})
    assert _native._plan_placement(full, prompt=10, reserve=20, unified=False, pool=0).slot == 1


def test_plan_waits_while_every_slot_is_busy() -> None:
    slots = _slots({"active": True, "cached": 10}, {"active": True, "cached": 10})
    plan = _native._plan_placement(slots, prompt=10, reserve=20, unified=False, pool=0)
    assert (plan.slot, plan.evict) == (-1, [])


def test_plan_shares_a_prefix_held_by_a_busy_slot() -> None:
    # A regenerated answer: slot 0 (busy) holds the prompt; the request shares its cells in slot 1.
    slots = _slots({"active": True, "cached": 60, "reserved": 100, "prefix": 39}, {"cached": 0})
    plan = _native._plan_placement(slots, prompt=40, reserve=100, unified=True, pool=512)
    assert (plan.slot, plan.prefix, plan.donor, plan.evict) == (1, 39, 0, [])
    # With a cache per slot there is nothing to share: it starts from scratch.
    plan = _native._plan_placement(slots, prompt=40, reserve=100, unified=False, pool=512)
    assert (plan.slot, plan.prefix, plan.donor) == (1, 0, -1)


def test_plan_without_room_beside_an_idle_donor_takes_its_slot() -> None:
    slots = _slots({"cached": 200, "prefix": 39, "last_used": 5}, {"cached": 0})
    plan = _native._plan_placement(slots, prompt=40, reserve=100, unified=True, pool=256)
    assert (plan.slot, plan.prefix, plan.donor, plan.evict) == (0, 39, -1, [])


def test_plan_evicts_idle_caches_least_recently_used_first_and_only_as_needed() -> None:
    slots = _slots(
        {"cached": 100, "last_used": 2},
        {"cached": 100, "last_used": 1},
        {"active": True, "cached": 20, "reserved": 50},
        {"cached": 0},
    )
    plan = _native._plan_placement(slots, prompt=30, reserve=120, unified=True, pool=300)
    assert (plan.slot, plan.evict) == (3, [1])  # 250 held + 120 > 300: the older cache goes, not both
    plan = _native._plan_placement(slots, prompt=30, reserve=240, unified=True, pool=300)
    assert (plan.slot, plan.evict) == (3, [1, 0])
    # Running requests hold the pool: idle caches give way, and still the request waits.
    plan = _native._plan_placement(slots, prompt=30, reserve=290, unified=True, pool=300)
    assert (plan.slot, plan.evict) == (-1, [1, 0])


def test_plan_batch_generating_slots_first_then_prompts_in_slot_order() -> None:
    slots = _slots(
        {"active": True, "prompt_left": 50},
        {"active": True, "generating": True, "n_next": 1, "cached": 30},
        {"active": True, "generating": True, "n_next": 4, "cached": 30},  # its next token and a 3-token draft
        {"active": True, "prompt_left": 50},
    )
    plan = _native._plan_batch(slots, n_batch=64, n_ctx_seq=512)
    assert (plan.take, plan.lo, plan.hi) == ([50, 1, 4, 9], 0, 3)
    assert plan.filler == [False] * 4


def test_plan_batch_bridges_an_idle_slot_with_a_filler_unless_it_is_far_longer() -> None:
    near = _slots(
        {"active": True, "generating": True, "n_next": 1, "cached": 40},
        {"cached": 30},
        {"active": True, "generating": True, "n_next": 1, "cached": 40},
    )
    plan = _native._plan_batch(near, n_batch=64, n_ctx_seq=2048)
    assert (plan.take, plan.filler) == ([1, 0, 1], [False, True, False])
    assert _native._plan_batch(near, n_batch=64, n_ctx_seq=2048, fill_gaps=False).filler == [False] * 3
    far = _slots(
        {"active": True, "generating": True, "n_next": 1, "cached": 40},
        {"cached": 1000},  # attending over 1000 cells in every stream costs more than a second pass
        {"active": True, "generating": True, "n_next": 1, "cached": 40},
    )
    assert _native._plan_batch(far, n_batch=64, n_ctx_seq=2048).filler == [False] * 3


def test_plan_batch_fillers_fit_in_n_batch_by_shortening_the_last_prompt() -> None:
    slots = _slots({"active": True, "prompt_left": 100}, {"cached": 10}, {"active": True, "prompt_left": 100})
    plan = _native._plan_batch(slots, n_batch=8, n_ctx_seq=256)
    assert (plan.take, plan.filler) == ([8, 0, 0], [False, False, False])  # slot 2 waits: no filler needed
    slots = _slots(
        {"active": True, "prompt_left": 4}, {"cached": 10}, {"active": True, "prompt_left": 100}, {"cached": 0}
    )
    plan = _native._plan_batch(slots, n_batch=8, n_ctx_seq=256)
    assert (plan.take, plan.filler, plan.hi) == ([4, 0, 3, 0], [False, True, False, False], 2)
