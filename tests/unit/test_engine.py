"""The native engine on a tiny random-weight model: text handling, concurrency, cancellation."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler

import langchain_llamacpp
from langchain_llamacpp import _readers, native
from tests.concurrency import call_from_threads, collect_counting_loop_ticks
from tests.tiny_model import greedy_llm, write_tiny_lora


def test_public_api_is_pinned() -> None:
    assert sorted(langchain_llamacpp.__all__) == [
        "ChatLlamaCpp",
        "LlamaCpp",
        "LlamaCppEmbeddings",
        "LlamaCppReranker",
        "__version__",
        "grammars",
    ]


def test_stream_joined_equals_invoke(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path)
    text = llm.invoke("Hello there")
    assert text
    assert "".join(llm.stream("Hello there")) == text


def test_max_tokens_and_finish_reason(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=7)
    result = llm.generate(["Hello"])
    info = result.generations[0][0].generation_info
    assert info is not None
    assert info["finish_reason"] == "length"
    assert info["usage"]["completion_tokens"] == 7
    assert result.llm_output is not None
    usage = result.llm_output["token_usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


def _greedy_chunks(engine: native.Engine, prompt: str, stop: list[str]) -> list[native.Chunk]:
    """A greedy request's chunks: one per token, then any text still held back at the end."""
    params = native.RequestParams()
    params.prompt = engine.model.tokenize(prompt)
    params.max_tokens, params.ignore_eos, params.stop = 60, True, stop
    params.sampling.temperature = 0.0
    return engine.submit(params).wait()


def _may_show(generated: str, stop: str) -> str:
    """What a stream may show once `generated` is generated: the text before the stop string once it is
    there, else all but the longest tail that may still become it."""
    if stop in generated:
        return generated[: generated.index(stop)]
    held = max((n for n in range(1, len(stop)) if generated.endswith(stop[:n])), default=0)
    return generated[: len(generated) - held]


def test_stop_strings_are_held_back_only_while_they_may_match(tiny_model_path: str) -> None:
    """No part of a stop string is ever shown, and text is held back only while it may become one.

    After each token the text shown so far must be exactly what may be shown of the text generated so
    far: text shown and then found to start a stop string (which a stream cannot take back) fails at
    that token, and so does text still held back after the model went another way.
    """
    llm = greedy_llm(tiny_model_path, max_tokens=60, ignore_eos=True)
    engine = llm.load()
    prompt = "Once upon a time"
    plain = _greedy_chunks(engine, prompt, [])
    pieces = [chunk.text for chunk in plain]
    full = "".join(pieces)
    assert llm.invoke(prompt) == full

    def generated(step: int) -> str:
        return "".join(pieces[: step + 1])

    # Stop strings that start inside one token's text: one that occurs (ending inside the next token),
    # and one whose first characters the model writes over two tokens before it goes another way.
    long_pairs = [i for i in range(1, len(pieces) - 3) if len(pieces[i]) >= 3 and len(pieces[i + 1]) >= 3]
    first, second = long_pairs[0], long_pairs[-1]
    matching = full[len(generated(second)) - 2 : len(generated(second)) + 2]
    diverging = full[len(generated(first)) - 2 : len(generated(first + 1))] + "\u2603"
    assert diverging not in full and full.index(matching) == len(generated(second)) - 2
    # So both make the engine hold text back mid-stream, and the diverging one releases it again.
    assert _may_show(generated(second), matching) == generated(second)[:-2]
    assert _may_show(generated(first + 1), diverging) == generated(first)[:-2]
    assert _may_show(generated(first + 2), diverging) == generated(first + 2)

    for stop in (matching, diverging):
        chunks = _greedy_chunks(engine, prompt, [stop])
        shown = ""
        for step, chunk in enumerate(chunks[: len(plain)]):
            assert chunk.token == plain[step].token
            shown += chunk.text
            assert shown == _may_show(generated(step), stop), f"after token {step} with stop {stop!r}"
        shown += "".join(chunk.text for chunk in chunks[len(plain) :])  # what was held back at the end
        final = full[: full.index(stop)] if stop in full else full
        assert shown == final
        # Through LangChain: the same text, streamed and whole.
        assert "".join(llm.stream(prompt, stop=[stop])) == final
        assert llm.invoke(prompt, stop=[stop]) == final


def test_constructor_and_call_stop_are_merged(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=60)
    full = llm.invoke("Once upon a time")
    first, second = full[30:34], full[12:16]
    merged = greedy_llm(tiny_model_path, max_tokens=60, stop=[first])
    assert merged.invoke("Once upon a time") == full[: full.index(first)]
    assert merged.invoke("Once upon a time", stop=[second]) == full[: full.index(second)]
    assert "".join(merged.stream("Once upon a time", stop=[second])) == full[: full.index(second)]


def test_grammar_constrains_output(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, grammar='root ::= ("yes" | "no") "."', max_tokens=10)
    assert llm.invoke("Answer:") in ("yes.", "no.")


def test_bundled_grammar_by_name(tiny_model_path: str) -> None:
    from langchain_llamacpp import grammars

    assert {"json", "list"} <= set(grammars.names())
    llm = greedy_llm(tiny_model_path, grammar_path="list", max_tokens=30)
    text = llm.invoke("A list:")
    assert text.startswith("- ") or text.startswith("\n")
    # The docs' paths resolve to the bundled files when they do not exist here.
    docs_style = greedy_llm(tiny_model_path, grammar_path="/Users/somebody/llama.cpp/grammars/json.gbnf")
    assert str(docs_style.grammar_path).endswith("grammars/json.gbnf")


def test_logprobs(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, logprobs=3, max_tokens=5)
    info = llm.generate(["Hello"]).generations[0][0].generation_info
    assert info is not None
    lp = info["logprobs"]
    assert len(lp["token_logprobs"]) == 5
    assert all(x <= 0 for x in lp["token_logprobs"])
    assert all(len(top) == 3 for top in lp["top_logprobs"])
    # Greedy: the chosen token is the most likely one.
    for chosen, top in zip(lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)


def test_echo_and_per_call_options(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=5)
    plain = llm.invoke("Hello")
    assert llm.invoke("Hello", echo=True) == "Hello" + plain
    assert llm.invoke("Hello", max_tokens=2) != plain


def test_callbacks_get_every_token_before_it_is_yielded(tiny_model_path: str) -> None:
    seen: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            seen.append(token)

    llm = greedy_llm(tiny_model_path, max_tokens=12, callbacks=[Recorder()])
    yielded = []
    for piece in llm.stream("Hi"):
        if piece:
            assert seen and seen[-1] == piece  # the callback ran first
        yielded.append(piece)
    assert "".join(seen) == "".join(yielded)
    seen.clear()
    text = llm.invoke("Hi")
    assert len(seen) >= 10 and "".join(seen) == text


async def test_async_callbacks_are_awaited(tiny_model_path: str) -> None:
    seen: list[str] = []

    class Recorder(AsyncCallbackHandler):
        async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            await asyncio.sleep(0)
            seen.append(token)

    llm = greedy_llm(tiny_model_path, max_tokens=12, callbacks=[Recorder()])
    text = await llm.ainvoke("Hi")
    assert "".join(seen) == text
    assert text == llm.invoke("Hi")


async def test_astream_leaves_the_event_loop_free(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=200, n_ctx=512)
    pieces, ticks = await collect_counting_loop_ticks(llm.astream("Hello"), 0.001)
    assert "".join(pieces) == llm.invoke("Hello", max_tokens=200)
    assert ticks > 20  # the loop kept running while tokens were generated


async def test_cancelled_task_stops_its_sequence(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=-1, n_ctx=2048)
    engine = llm.load()

    async def consume() -> None:
        async for _ in llm.astream("Hello"):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    before = engine.stats().tokens_decoded
    await asyncio.sleep(0.3)
    assert engine.stats().tokens_decoded - before <= 2  # stopped within a step
    assert llm.invoke("Hello", max_tokens=3)  # the slot is free again


async def test_concurrent_streams_share_one_wake_up_pipe(tiny_model_path: str) -> None:
    """The loop's async requests share one pipe (one read per decode step, not one per stream); each still
    gets exactly its own text, a cancelled one's late byte wakes nobody wrongly, and the pipe is given
    back when the last request is done."""
    llm = greedy_llm(tiny_model_path, max_tokens=24, n_seq=4, ignore_eos=True)
    prompts = [f"Stream {i}:" for i in range(6)]
    expected = [llm.invoke(p) for p in prompts]
    fds_before = len(os.listdir("/proc/self/fd"))
    seen: set[int] = set()

    async def collect(prompt: str) -> str:
        text = ""
        async for piece in llm.astream(prompt):
            seen.update(w.write_fd for w in _readers._LoopWaker._by_loop.values())
            text += piece
        return text

    async def abandoned() -> None:
        stream = llm.astream("left after one token", max_tokens=-1)
        async for _ in stream:
            break
        await stream.aclose()  # cancelled, its slot freed; the engine may still write its byte after

    results = await asyncio.gather(*(collect(p) for p in prompts), abandoned())
    assert results[:-1] == expected
    assert len(seen) == 1  # one pipe for all seven requests of this loop
    assert asyncio.get_running_loop() not in _readers._LoopWaker._by_loop  # given back
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 2  # at most the one pooled pipe
    assert await collect("Stream 0:") == expected[0]  # the pooled pipe, maybe with a stale byte, works


def test_loops_in_threads_each_have_their_pipe(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=16, n_seq=4)
    prompts = ["One", "Two", "Three"]
    expected = [llm.invoke(p) for p in prompts]

    def run(prompt: str) -> str:
        async def main() -> str:
            return "".join([piece async for piece in llm.astream(prompt)])

        return asyncio.run(main())

    assert call_from_threads(run, prompts, n_threads=3) == [expected] * 3


def test_closing_a_stream_frees_the_slot(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=-1, n_ctx=2048)
    engine = llm.load()
    stream = llm.stream("Hello")
    for _ in range(3):
        next(stream)
    stream.close()
    before = engine.stats().tokens_decoded
    time.sleep(0.3)
    assert engine.stats().tokens_decoded - before <= 2
    assert llm.invoke("Hello", max_tokens=3)


def test_exception_in_callback_cancels(tiny_model_path: str) -> None:
    class Boom(BaseCallbackHandler):
        raise_error = True

        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            raise RuntimeError("stop here")

    llm = greedy_llm(tiny_model_path, max_tokens=-1, n_ctx=2048, callbacks=[Boom()])
    engine = llm.load()
    with pytest.raises(RuntimeError, match="stop here"):
        llm.invoke("Hello")
    before = engine.stats().tokens_decoded
    time.sleep(0.3)
    assert engine.stats().tokens_decoded - before <= 2


@pytest.mark.parametrize("n_seq", [1, 4])
def test_threads_share_one_instance(tiny_model_path: str, n_seq: int) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=16, n_seq=n_seq)
    prompts = [f"Prompt number {i}" for i in range(10)]
    expected = [llm.invoke(p) for p in prompts]
    assert call_from_threads(llm.invoke, prompts, n_threads=8) == [expected] * 8


def test_batch_and_generate_many(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=12, n_seq=4, ignore_eos=True)
    prompts = [f"Item {i}:" for i in range(6)]
    sequential = [llm.invoke(p) for p in prompts]
    assert llm.batch(prompts) == sequential
    engine = llm.load()
    before = engine.stats().steps
    result = llm.generate(prompts)
    assert [g[0].text for g in result.generations] == sequential
    # Decoded together: one after another, 6 answers of 12 tokens (ignore_eos) take at least 6 * 12
    # decode steps; four slots at a time take about 2 * 13. The steps of this call only: the batch()
    # call before it decodes together too.
    assert engine.stats().steps - before <= len(prompts) * 12 // 2


async def test_abatch(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, max_tokens=12, n_seq=4)
    prompts = [f"Item {i}:" for i in range(6)]
    assert await llm.abatch(prompts) == [llm.invoke(p) for p in prompts]


def test_instances_share_weights_and_engine(tiny_model_path: str) -> None:
    a = greedy_llm(tiny_model_path, temperature=0.5)
    b = greedy_llm(tiny_model_path, temperature=0.1)
    assert a.load() is b.load()  # same model and context settings: one engine, one cache
    c = greedy_llm(tiny_model_path, n_ctx=1024)
    assert c.load() is not a.load()
    assert c.native_model is a.native_model  # but one copy of the weights


def test_tokenizer_api(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path)
    model = llm.native_model
    tokens = model.tokenize("Hello world", add_special=False)
    assert model.detokenize(tokens) == "Hello world"
    assert llm.get_num_tokens("Hello world") == len(tokens)
    assert model.n_vocab == 32000 and model.architecture == "llama"
    assert b"".join(model.token_to_piece(t) for t in tokens).decode().strip() == "Hello world"
    with pytest.raises(IndexError):
        model.token_to_piece(10**6)


def test_silent_when_not_verbose(tiny_model_path: str) -> None:
    code = (
        "from langchain_llamacpp import LlamaCpp\n"
        f"llm = LlamaCpp(model_path={tiny_model_path!r}, temperature=0, max_tokens=5)\n"
        "llm.invoke('hi'); list(llm.stream('hi'))\n"
        "try:\n    llm.invoke('hi', grammar='root ::= nope')\nexcept ValueError:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == ""


def test_verbose_prints_load_info_and_timings(tiny_model_path: str) -> None:
    code = (
        "from langchain_llamacpp import LlamaCpp\n"
        f"llm = LlamaCpp(model_path={tiny_model_path!r}, temperature=0, max_tokens=5, n_ctx=768, verbose=True)\n"
        "llm.invoke('hi')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "llama_model_loader" in proc.stderr or "print_info" in proc.stderr
    assert "tok/s" in proc.stderr and "prompt eval" in proc.stderr


def test_context_manager_and_close(tiny_model_path: str) -> None:
    with greedy_llm(tiny_model_path, n_ctx=640) as llm:
        assert llm.invoke("Hi", max_tokens=2)
    assert llm._loaded is None


def test_native_request_api(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path)
    engine = llm.load()
    params = native.RequestParams()
    params.prompt = engine.model.tokenize("Hello")
    params.max_tokens = 5
    params.sampling.temperature = 0
    request = engine.submit(params)
    chunks = request.wait()
    assert len(chunks) == 5 and request.finish_reason == "length"
    assert request.usage.completion_tokens == 5


def test_callback_manager_from_the_community_docs(tiny_model_path: str) -> None:
    from langchain_core.callbacks import CallbackManager

    seen: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            seen.append(token)

    llm = greedy_llm(tiny_model_path, max_tokens=6, callback_manager=CallbackManager([Recorder()]))
    assert "".join(seen) == "" and llm.invoke("Hi") == "".join(seen)
    with pytest.raises(ValueError, match="either callbacks or callback_manager"):
        greedy_llm(tiny_model_path, callbacks=[Recorder()], callback_manager=CallbackManager([Recorder()]))


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_ignore_eos_generates_exactly_max_tokens(tiny_model_path: str, temperature: float) -> None:
    # The tiny model's EOS token is made the most likely one; ignore_eos must still go on.
    eos = greedy_llm(tiny_model_path).native_model.eos_token
    llm = greedy_llm(tiny_model_path, temperature=temperature, max_tokens=9, logit_bias={eos: 100.0})
    assert llm.generate(["Hi"]).generations[0][0].generation_info["usage"]["completion_tokens"] == 1  # type: ignore[index]
    info = llm.generate(["Hi"], ignore_eos=True).generations[0][0].generation_info
    assert info is not None and info["usage"]["completion_tokens"] == 9 and info["finish_reason"] == "length"


def test_greedy_fast_path_matches_the_sampler_chain(tiny_model_path: str) -> None:
    # temperature 0 with no penalties takes an argmax shortcut; a no-op logit bias forces the chain.
    fast = greedy_llm(tiny_model_path, repeat_penalty=1.0, max_tokens=30)
    chain = greedy_llm(tiny_model_path, repeat_penalty=1.0, max_tokens=30, logit_bias={5: 0.0})
    assert fast.invoke("Hello") == chain.invoke("Hello")


def test_low_level_sequence_api(tiny_model_path: str) -> None:
    llm = greedy_llm(tiny_model_path, n_seq=2, n_ctx=768)
    engine = llm.load()
    engine.clear_cache()
    model = engine.model
    tokens = model.tokenize("The quick brown fox")
    (last,) = engine.evaluate(0, tokens)
    assert len(last) == model.n_vocab
    assert engine.slot_tokens(0) == tokens
    rows = engine.evaluate(0, model.tokenize(" jumps", add_special=False), all_logits=True)
    assert len(rows) == len(model.tokenize(" jumps", add_special=False))
    # Branch: slot 1 copies slot 0, and the same next token gives the same logits in both.
    engine.kv_copy(0, 1)
    assert engine.slot_tokens(1) == engine.slot_tokens(0)
    a = engine.evaluate(0, [100])[0]
    b = engine.evaluate(1, [100])[0]
    assert a == pytest.approx(b, abs=1e-4)
    # Dropping the tail and evaluating again reproduces the earlier logits.
    n = len(engine.slot_tokens(0))
    engine.kv_remove(0, n - 1)
    assert engine.slot_tokens(0) == engine.slot_tokens(1)[:-1]
    assert engine.evaluate(0, [100])[0] == pytest.approx(a, abs=1e-3)
    # A request that starts with the evaluated tokens reuses them.
    result = llm.generate([model.detokenize(tokens)], max_tokens=2)
    assert result.generations[0][0].generation_info["usage"]["cached_tokens"] > 0  # type: ignore[index]
    with pytest.raises(IndexError, match="slot 5 does not exist"):
        engine.evaluate(5, [1])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.evaluate(0, [10**7])


def test_lora_adapter(tiny_model_path: str, tmp_path: Path) -> None:
    adapter = str(write_tiny_lora(tmp_path / "lora.gguf"))
    prompt = "The quick brown fox"
    base = greedy_llm(tiny_model_path, max_tokens=12).invoke(prompt)
    assert greedy_llm(tiny_model_path, max_tokens=12, lora_path=adapter).invoke(prompt) != base
    # Scale 0 adds nothing; lora_base is accepted for compatibility with the old bindings.
    assert (
        greedy_llm(tiny_model_path, max_tokens=12, lora_path=adapter, lora_scale=0.0, lora_base="x").invoke(prompt)
        == base
    )
    wrong = str(write_tiny_lora(tmp_path / "wrong.gguf", n_embd=32))
    with pytest.raises(ValueError, match=r"failed to load LoRA adapter .*wrong\.gguf: .*incorrect shape"):
        greedy_llm(tiny_model_path, lora_path=wrong).load()
    with pytest.raises(FileNotFoundError, match="LoRA adapter not found"):
        greedy_llm(tiny_model_path, lora_path=str(tmp_path / "missing.gguf"))


def test_max_tokens_zero_generates_nothing(tiny_model_path: str) -> None:
    # As llama-server's n_predict=0: the prompt is checked, nothing is generated, and it says why.
    llm = greedy_llm(tiny_model_path, max_tokens=0)
    generation = llm.generate(["Hello there"]).generations[0][0]
    assert generation.text == ""
    assert generation.generation_info is not None
    assert generation.generation_info["finish_reason"] == "length"
    assert generation.generation_info["usage"]["completion_tokens"] == 0
    assert "".join(llm.stream("Hello there")) == ""
    assert asyncio.run(llm.ainvoke("Hello there")) == ""
    with pytest.raises(ValueError, match="grammar"):
        llm.invoke("Hello there", grammar="root ::= undefined")


def test_paths_may_be_pathlib_paths(tiny_model_path: str, tmp_path: Path) -> None:
    from langchain_llamacpp import ChatLlamaCpp, LlamaCpp

    llm = LlamaCpp(model_path=Path(tiny_model_path), temperature=0, max_tokens=2, seed=1)
    assert llm.model_path == tiny_model_path
    assert llm.invoke("hi") == greedy_llm(tiny_model_path, max_tokens=2).invoke("hi")
    assert ChatLlamaCpp(model_path=Path(tiny_model_path)).model_path == tiny_model_path
    with pytest.raises(FileNotFoundError, match="LoRA adapter not found"):
        LlamaCpp(model_path=Path(tiny_model_path), lora_path=tmp_path / "missing.gguf")
