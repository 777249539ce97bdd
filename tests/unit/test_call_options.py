"""Standard call options on the tiny model: timeout (a deadline per call), max_retries, hosted-API
arguments accepted and ignored, and sampling values that make no sense rejected."""

from __future__ import annotations

import asyncio
import math
import threading
import time
import warnings
from typing import Any

import pytest
from pydantic import ValidationError

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native
from langchain_llamacpp._readers import AsyncRequest, BlockingRequest
from tests import timing

# Long enough to outlast any timeout below (the tiny model decodes a few hundred tokens a second on
# a quiet machine), short enough to end on its own if a timeout failed to stop it.
ENDLESS: dict[str, Any] = {"max_tokens": 1500, "ignore_eos": True}
TIMEOUT = 0.3
# How late a TimeoutError may come on a loaded machine (the deadline is checked between steps).
SLACK = 3.0 * timing.SCALE


def _llm(path: str, **kwargs: Any) -> LlamaCpp:
    defaults: dict[str, Any] = {"temperature": 0, "max_tokens": 20, "seed": 1, "n_ctx": 2048}
    defaults.update(kwargs)
    return LlamaCpp(model_path=path, **defaults)


def _assert_stopped(llm: LlamaCpp | ChatLlamaCpp) -> None:
    """The engine decodes nothing more: the timed-out request was cancelled and its slot freed."""
    engine = llm.load()
    # A step in flight ends first: on a loaded machine a step of the tiny model can take most of a
    # second. A request still running would decode a token at every step.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        before = engine.stats().tokens_decoded
        time.sleep(1.0)
        if engine.stats().tokens_decoded == before:
            return
    raise AssertionError("the engine is still decoding after the timeout")


def _timed(fn: Any) -> float:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=rf"timeout={TIMEOUT:g} s"):
        fn()
    return time.monotonic() - start


# -- timeout ------------------------------------------------------------------------------------


def test_invoke_past_timeout_raises_and_frees_the_slot(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    expected = llm.invoke("Hello there")
    elapsed = _timed(lambda: llm.invoke("Once upon a time", timeout=TIMEOUT, **ENDLESS))
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK
    _assert_stopped(llm)
    # n_seq=1: the next call gets the only slot, and the same text as before.
    assert llm.invoke("Hello there", timeout=60) == expected
    assert llm.invoke("Hello there") == expected


def test_stream_past_timeout_raises_and_frees_the_slot(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path, timeout=TIMEOUT)
    expected = "".join(llm.stream("Hello there", timeout=None))  # a call's own timeout, None: no limit
    received: list[str] = []

    def consume() -> None:
        for text in llm.stream("Once upon a time", **ENDLESS):
            received.append(text)

    elapsed = _timed(consume)
    assert TIMEOUT <= elapsed < TIMEOUT + SLACK
    _assert_stopped(llm)
    assert "".join(llm.stream("Hello there", timeout=60)) == expected


def test_batch_past_timeout_raises(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path, n_seq=2)
    expected = llm.batch(["Hello there", "General Kenobi"])
    elapsed = _timed(lambda: llm.batch(["Once upon a time", "In a hole"], timeout=TIMEOUT, **ENDLESS))
    assert elapsed < TIMEOUT + SLACK
    _assert_stopped(llm)
    assert llm.batch(["Hello there", "General Kenobi"], timeout=60) == expected


def test_chat_invoke_and_stream_past_timeout(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=20, seed=1, n_ctx=2048)
    expected = chat.invoke("Hello there").content
    _timed(lambda: chat.invoke("Once upon a time", timeout=TIMEOUT, **ENDLESS))
    _timed(lambda: list(chat.stream("Once upon a time", timeout=TIMEOUT, **ENDLESS)))
    _timed(lambda: chat.batch(["Once upon a time", "In a hole"], timeout=TIMEOUT, **ENDLESS))
    _assert_stopped(chat)
    assert chat.invoke("Hello there", timeout=60).content == expected


async def test_ainvoke_and_astream_past_timeout(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=20, seed=1, n_ctx=2048)
    expected = await llm.ainvoke("Hello there")
    expected_chat = (await chat.ainvoke("Hello there")).content

    async def consume(stream: Any) -> None:
        async for _ in stream:
            pass

    for call in (
        llm.ainvoke("Once upon a time", timeout=TIMEOUT, **ENDLESS),
        consume(llm.astream("Once upon a time", timeout=TIMEOUT, **ENDLESS)),
        chat.ainvoke("Once upon a time", timeout=TIMEOUT, **ENDLESS),
        consume(chat.astream("Once upon a time", timeout=TIMEOUT, **ENDLESS)),
        llm.abatch(["Once upon a time", "In a hole"], timeout=TIMEOUT, **ENDLESS),
    ):
        start = time.monotonic()
        with pytest.raises(TimeoutError, match=rf"timeout={TIMEOUT:g} s"):
            await call
        assert time.monotonic() - start < TIMEOUT + SLACK
    await asyncio.to_thread(_assert_stopped, llm)
    assert await llm.ainvoke("Hello there", timeout=60) == expected
    assert (await chat.ainvoke("Hello there", timeout=60)).content == expected_chat


def _greedy_request(engine: native.Engine, prompt: str, max_tokens: int) -> native.RequestParams:
    params = native.RequestParams()
    params.prompt = engine.model.tokenize(prompt, add_special=True, parse_special=True)
    params.max_tokens = max_tokens
    params.sampling.temperature = 0.0
    return params


async def test_a_reply_finished_in_time_is_whole_however_late_it_is_read(tiny_model_path: str) -> None:
    """The deadline passes after the reply finished but before its chunks were read (a slow consumer):
    the reply, not a TimeoutError. Both readers keep one rule: a timeout is a request that had not
    finished on its own by its deadline."""
    llm = _llm(tiny_model_path)
    engine = llm.load()
    expected = llm.invoke("Hello there")
    late = AsyncRequest(engine, _greedy_request(engine, "Hello there", 20), TIMEOUT)
    while not late.request.finish_reason:  # finished; nothing read yet
        await asyncio.sleep(0.01)
    await asyncio.sleep(TIMEOUT)  # and now past the deadline
    assert late.request.finish_reason == "length"
    assert "".join(c.text for batch in [b async for b in late.batches()] for c in batch) == expected

    def read_blocking_late() -> str:
        pending = BlockingRequest(engine, _greedy_request(engine, "Hello there", 20), TIMEOUT)
        while not pending.request.finish_reason:
            time.sleep(0.01)
        time.sleep(TIMEOUT)
        return "".join(c.text for c in pending)

    assert await asyncio.to_thread(read_blocking_late) == expected


def test_time_in_the_queue_counts(tiny_model_path: str) -> None:
    """With one slot taken and a request queued before it, a call still times out on time."""
    llm = _llm(tiny_model_path, n_seq=1)  # one slot: the call waits in the queue (with 8 it would just run)
    expected = llm.invoke("Hello there")
    errors: list[BaseException] = []

    def occupy() -> None:
        try:
            llm.invoke("Once upon a time", timeout=TIMEOUT + SLACK + 2, **ENDLESS)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=occupy) for _ in range(2)]  # one in the slot, one queued
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    elapsed = _timed(lambda: llm.invoke("Hello there", timeout=TIMEOUT))
    assert elapsed < TIMEOUT + SLACK
    for thread in threads:
        thread.join()
    assert all(isinstance(e, TimeoutError) for e in errors)  # (on a fast machine they may finish first)
    assert llm.invoke("Hello there", timeout=60) == expected


async def test_time_in_the_queue_counts_async(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path, n_seq=1)
    expected = await llm.ainvoke("Hello there")
    occupying = [
        asyncio.create_task(llm.ainvoke("Once upon a time", timeout=TIMEOUT + SLACK + 2, **ENDLESS)) for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await llm.ainvoke("Hello there", timeout=TIMEOUT)
    assert time.monotonic() - start < TIMEOUT + SLACK
    results = await asyncio.gather(*occupying, return_exceptions=True)
    assert all(isinstance(r, (str, TimeoutError)) for r in results)
    assert await llm.ainvoke("Hello there", timeout=60) == expected


def test_a_call_within_its_timeout_is_unchanged(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path, logprobs=2)
    plain = llm.generate(["Hello there"]).generations[0][0]
    timed = llm.generate(["Hello there"], timeout=60).generations[0][0]
    assert timed.text == plain.text
    assert timed.generation_info is not None and plain.generation_info is not None
    assert timed.generation_info["logprobs"] == plain.generation_info["logprobs"]
    assert timed.generation_info["finish_reason"] == plain.generation_info["finish_reason"] == "length"


# -- arguments for hosted APIs -----------------------------------------------------------------


@pytest.mark.parametrize("cls", [LlamaCpp, ChatLlamaCpp])
def test_api_key_and_base_url_are_ignored_with_a_warning(tiny_model_path: str, cls: type) -> None:
    with pytest.warns(UserWarning, match=r"^api_key, base_url ignored: .* runs a local model") as record:
        llm = cls(model_path=tiny_model_path, api_key="test", base_url="http://localhost:11434")
    assert len(record) == 1
    assert record[0].filename == __file__  # points at the caller
    assert llm.model_kwargs == {}
    assert not hasattr(llm, "api_key")


def test_api_key_none_is_silent(tiny_model_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ChatLlamaCpp(model_path=tiny_model_path, api_key=None)


def test_max_retries_and_timeout_are_fields(tiny_model_path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chat = ChatLlamaCpp(model_path=tiny_model_path, timeout=60, max_retries=2)
    assert (chat.timeout, chat.max_retries) == (60, 2)
    assert chat.model_kwargs == {}


# -- values that make no sense --------------------------------------------------------------------

FLOAT_FIELDS = [
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
    "mirostat_tau",
    "mirostat_eta",
    "lora_scale",
    "rope_freq_base",
    "rope_freq_scale",
    "timeout",
]


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOAT_FIELDS)
def test_non_finite_floats_are_rejected(tiny_model_path: str, name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=rf"(?s)^1 validation error.*\n{name}\n"):
        LlamaCpp(model_path=tiny_model_path, **{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("temperature", -0.5),
        ("top_p", 1.5),
        ("top_p", -0.1),
        ("min_p", 2.0),
        ("typical_p", -1.0),
        ("repeat_penalty", 0.0),
        ("mirostat_tau", -1.0),
        ("timeout", 0),
        ("timeout", -1),
        ("max_retries", -1),
    ],
)
def test_out_of_range_values_are_rejected(tiny_model_path: str, name: str, value: float) -> None:
    with pytest.raises(ValidationError, match=rf"(?s)\n{name}\n"):
        ChatLlamaCpp(model_path=tiny_model_path, **{name: value})


@pytest.mark.parametrize(
    ("name", "value"), [("temperature", math.nan), ("top_p", math.inf), ("timeout", -1.0), ("temperature", -1)]
)
def test_per_call_options_are_checked_like_fields(tiny_model_path: str, name: str, value: float) -> None:
    llm = _llm(tiny_model_path)
    with pytest.raises(ValueError, match=rf"^invalid {name}="):
        llm.invoke("Hello", **{name: value})
    chat = ChatLlamaCpp(model_path=tiny_model_path)
    with pytest.raises(ValueError, match=rf"^invalid {name}="):
        chat.invoke("Hello", **{name: value})


def test_values_that_mean_something_still_work(tiny_model_path: str) -> None:
    """max_tokens=-1 (langchain_community: no limit), negative penalties, a -inf logit bias."""
    unlimited = _llm(tiny_model_path, max_tokens=-1, ignore_eos=True, n_ctx=256)
    assert unlimited.max_tokens == -1
    info = unlimited.generate(["Hello there"]).generations[0][0].generation_info or {}
    assert info["finish_reason"] == "length"  # the end of the context, not a limit of -1 tokens
    assert info["usage"]["total_tokens"] == unlimited.load().n_ctx
    plain = _llm(tiny_model_path)
    first = plain.generate(["Hello there"], logprobs=0).generations[0][0]
    assert first.generation_info is not None
    # A negative penalty is a bonus for tokens already seen: a large one repeats the prompt's tokens only.
    prompt = {*plain.get_token_ids("Hello there"), plain.native_model.bos_token}
    assert not set(first.generation_info["logprobs"]["token_ids"]) <= prompt
    for penalty in ("frequency_penalty", "presence_penalty"):
        echo = _llm(tiny_model_path, **{penalty: -0.5}).generate(["Hello there"], logprobs=0, **{penalty: -100.0})
        assert echo.generations[0][0].generation_info is not None
        assert set(echo.generations[0][0].generation_info["logprobs"]["token_ids"]) <= prompt, penalty
    banned = first.generation_info["logprobs"]["token_ids"][0]
    biased = plain.generate(["Hello there"], logprobs=0, logit_bias={banned: -math.inf}).generations[0][0]
    assert biased.generation_info is not None
    assert banned not in biased.generation_info["logprobs"]["token_ids"]
    for bad in (math.nan, math.inf):
        with pytest.raises(ValidationError, match="logit_bias"):
            _llm(tiny_model_path, logit_bias={banned: bad})
