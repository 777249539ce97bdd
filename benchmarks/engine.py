"""Sections on the generation paths: decode, prompt, batch, cache, long, gaps and invariant.

Each against llama.cpp's own `llama-bench` or `llama-batched-bench`, or against the same package used the
naive way (one call after another, a cold prompt).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from benchmarks.common import (
    Community,
    CommunityError,
    batched_bench,
    cell,
    interleave,
    llama_bench,
    sequential_and_batched,
)
from benchmarks.community import STORY, first_token_seconds, stream_rate  # shared by both sides
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native
from tests.models import get


def section_decode(threads: int, lines: list[str]) -> None:
    lines.append("\n## Decode through `stream()` vs `llama-bench` tg128\n")
    lines.append(
        "| model | llama-bench tg128 tok/s | stream() tok/s | ratio (range over rounds) | best vs best "
        "| invoke() ratio | community stream() tok/s | community ratio | community best vs best |"
        "\n|---|---|---|---|---|---|---|---|---|"
    )
    for name in ("gemma3", "qwen"):
        model = str(get(name))
        llm = LlamaCpp(model_path=model, n_threads=threads, temperature=0, repeat_penalty=1.0, n_ctx=512)
        llm.invoke(STORY, max_tokens=4)  # load
        reference, m = interleave(
            7,
            lambda model=model: llama_bench(model, threads, 0, 128)["tg128"],  # type: ignore[misc]
            ours=lambda llm=llm: stream_rate(llm, STORY, 128, ignore_eos=True),  # type: ignore[misc]
            invoke=lambda llm=llm: invoke_rate(llm, STORY, 128),  # type: ignore[misc]
            community=lambda model=model: Community.one("decode", model, "decode"),  # type: ignore[misc]
        )
        ours, theirs = m["ours"], m["community"]
        lines.append(
            f"| {name} | {reference:.1f} | {ours.value()} | {ours.ratio()} | {ours.best()} | {m['invoke'].ratio()} "
            f"| {theirs.value()} | {theirs.ratio()} | {theirs.best()} |"
        )
        print(lines[-1], flush=True)


def invoke_rate(llm: LlamaCpp, prompt: str, n: int) -> float:
    """Tokens/s through invoke() (no streaming): two calls differing by n tokens, so the prompt and the
    call's own cost cancel out (the prompt is a cached prefix in both)."""

    def seconds(max_tokens: int) -> float:
        t0 = time.perf_counter()
        llm.invoke(prompt, max_tokens=max_tokens, ignore_eos=True)
        return time.perf_counter() - t0

    return n / (seconds(n + 16) - seconds(16))


def prompt_rate(engine: native.Engine, n_prompt: int) -> float:
    model = engine.model
    tokens = [model.bos_token] + [(7 * i + 1000) % model.n_vocab for i in range(n_prompt - 1)]
    engine.clear_cache()
    params = native.RequestParams()
    params.prompt = tokens
    params.max_tokens = 1
    params.sampling.temperature = 0
    request = engine.submit(params)
    request.wait()
    return n_prompt / (request.usage["prompt_ms"] / 1000)


def section_prompt(threads: int, lines: list[str]) -> None:
    lines.append("\n## Prompt processing vs `llama-bench` pp512\n")
    lines.append(
        "| model | llama-bench pp512 tok/s | engine tok/s | ratio (range over rounds) | best vs best "
        "| community tok/s (invoke) | community ratio | community best vs best |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for name in ("gemma3", "qwen"):
        model = str(get(name))
        engine = LlamaCpp(model_path=model, n_threads=threads, n_ctx=1024).load()
        prompt_rate(engine, 512)  # warm-up, as llama-bench does
        reference, m = interleave(
            5,
            lambda model=model: llama_bench(model, threads, 512, 0)["pp512"],  # type: ignore[misc]
            ours=lambda engine=engine: prompt_rate(engine, 512),  # type: ignore[misc]
            community=lambda model=model: Community.one("prompt", model, "prompt"),  # type: ignore[misc]
        )
        ours, theirs = m["ours"], m["community"]
        lines.append(
            f"| {name} | {reference:.1f} | {ours.value()} | {ours.ratio()} | {ours.best()} "
            f"| {theirs.value()} | {theirs.ratio()} | {theirs.best()} |"
        )
        print(lines[-1], flush=True)


def section_batch(threads: int, lines: list[str]) -> None:
    lines.append("\n## `batch()` of 8 prompts (64 tokens each) on gemma3\n")
    model = str(get("gemma3"))
    prompts = [f"{STORY} (variant {i})" for i in range(8)]
    llm = LlamaCpp(
        model_path=model,
        n_threads=threads,
        temperature=0,
        repeat_penalty=1.0,
        n_seq=8,
        n_ctx=96,  # per sequence, as llama-batched-bench's -c 8*(24+64)+64 gives each of its 8 streams
        model_kwargs={"kv_unified": 0},  # a cache per sequence, as llama-batched-bench has by default
        max_tokens=64,
        ignore_eos=True,
    )
    llm.invoke(prompts[0], max_tokens=1)  # load
    sequential, batched = sequential_and_batched(llm, prompts)

    # Generation rate as llama-batched-bench counts it: tokens generated once every prompt is in.
    def concurrent_rate() -> float:
        stamps: list[list[float]] = [[] for _ in prompts]

        def consume(i: int) -> None:
            stamps[i] = [time.perf_counter() for piece in llm.stream(prompts[i]) if piece]

        threads_ = [threading.Thread(target=consume, args=(i,)) for i in range(8)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        start = max(s[0] for s in stamps)
        end = max(s[-1] for s in stamps)
        return sum(1 for s in stamps for t in s if t > start) / (end - start)

    reference, rates = interleave(3, lambda: batched_bench(model, threads, 24, 64, 8), ours=concurrent_rate)
    theirs = Community.measure("batch", model)
    speedup = {"x": theirs["sequential"] / theirs["batched"]} if theirs and "batched" in theirs else theirs
    lines.append("| measure | langchain-llamacpp | community |\n|---|---|---|")
    lines.append(f"| 8 calls one after another | {sequential:.2f} s | {cell(theirs, 'sequential', '{:.2f} s')} |")
    lines.append(f"| batch() of the same 8 | {batched:.2f} s | {cell(theirs, 'batched', '{:.2f} s')} |")
    lines.append(f"| speed-up | **{sequential / batched:.2f}x** | {cell(speedup, 'x', '{:.2f}x')} |")
    lines.append(f"| generation rate, 8 concurrent streams | {rates['ours'].value()} tok/s | |")
    lines.append(f"| llama-batched-bench S_TG at 8 sequences | {reference:.1f} tok/s | |")
    lines.append(f"| ratio (range over rounds) | **{rates['ours'].ratio()}** | |")
    print("\n".join(lines[-7:]), flush=True)


def section_cache(threads: int, lines: list[str]) -> None:
    lines.append("\n## Time to first token of a follow-up chat turn (qwen, 2 slots)\n")
    model = str(get("qwen"))
    chat = ChatLlamaCpp(model_path=model, n_threads=threads, temperature=0, max_tokens=32, n_seq=2, n_ctx=4096)
    system = ("system", "You are a meticulous assistant. " + "Answer carefully and cite the rules you follow. " * 60)
    chat.load().clear_cache()
    turn1 = [system, ("human", "Name a fruit.")]
    cold, reply = first_token_seconds(chat, turn1)
    turn2 = [*turn1, ("ai", reply), ("human", "Name another one.")]
    warm, reply2 = first_token_seconds(chat, turn2)
    other = [("system", "You are a poet. " * 100), ("human", "Write one line about rain.")]
    first_token_seconds(chat, other)  # another conversation served in between
    turn3 = [*turn2, ("ai", reply2), ("human", "And a third one?")]
    after_other, _ = first_token_seconds(chat, turn3)
    theirs = Community.measure("cache", model)
    vs = {k: theirs[k] / theirs["cold"] for k in ("warm", "after_other")} if theirs and "cold" in theirs else theirs
    lines.append("| measure | seconds | vs cold | community seconds | community vs cold |\n|---|---|---|---|---|")
    lines.append(f"| cold first turn | {cold:.3f} | 1.00 | {cell(theirs, 'cold', '{:.3f}')} | 1.00 |")
    lines.append(
        f"| follow-up turn | {warm:.3f} | **{warm / cold:.3f}** "
        f"| {cell(theirs, 'warm', '{:.3f}')} | {cell(vs, 'warm', '{:.3f}')} |"
    )
    lines.append(
        f"| follow-up after another conversation | {after_other:.3f} | **{after_other / cold:.3f}** "
        f"| {cell(theirs, 'after_other', '{:.3f}')} | {cell(vs, 'after_other', '{:.3f}')} |"
    )
    print("\n".join(lines[-4:]), flush=True)


def section_long(threads: int, lines: list[str]) -> None:
    lines.append("\n## Decode rate at token 1000 vs token 100 (gemma3)\n")
    model = str(get("gemma3"))
    llm = LlamaCpp(model_path=model, n_threads=threads, temperature=0, repeat_penalty=1.0, n_ctx=2048)
    llm.invoke(STORY, max_tokens=4)  # load

    def ours() -> float:
        stamps = [time.perf_counter() for piece in llm.stream(STORY, max_tokens=1100, ignore_eos=True) if piece]
        return (100 / (stamps[1050] - stamps[950])) / (100 / (stamps[200] - stamps[100]))

    def reference() -> float:
        ref = llama_bench(model, threads, 0, 100, depth="100,950")
        return ref["tg100@d950"] / ref["tg100@d100"]

    def community() -> float | None:
        figures = Community.measure("long", model)
        if figures is not None and "late" not in figures:
            raise CommunityError(str(figures.get("error")))
        return None if figures is None else figures["late"] / figures["early"]

    # Attention over a longer context costs llama.cpp itself some speed: the figure that is ours is how
    # the decline compares with llama-bench's at the same depths.
    reference_decline, m = interleave(3, reference, ours=ours, community=community)
    lines.append("| | late / early (tokens 950-1050 vs 100-200) | vs llama-bench's own decline |\n|---|---|---|")
    lines.append(f"| llama-bench tg100 at depth 950 vs 100 | {reference_decline:.3f} | 1.000 |")
    lines.append(f"| stream() | **{m['ours'].value('{:.3f}')}** | {m['ours'].ratio()} |")
    lines.append(f"| community stream() | {m['community'].value('{:.3f}')} | {m['community'].ratio()} |")
    print("\n".join(lines[-4:]), flush=True)


def section_gaps(threads: int, lines: list[str]) -> None:
    lines.append("\n## Four requests in slots 0, 2, 4, 6 vs in slots 0-3 (8 slots, gemma3, 64 tokens each)\n")
    model = str(get("gemma3"))
    llm = LlamaCpp(
        model_path=model,
        n_threads=threads,
        temperature=0,
        n_seq=8,
        n_ctx=256,
        max_tokens=64,
        ignore_eos=True,
        model_kwargs={"kv_unified": 0},  # fillers exist only with a cache per slot (one pool needs none)
    )
    engine = llm.load()
    stories = [f"Story number {i}: once upon a time" for i in range(8)]

    def rate(slots: list[int]) -> float:
        # Each slot caches its own story; a request that extends it goes back to that slot.
        engine.clear_cache()
        for story in stories:
            llm.invoke(story, max_tokens=1)
        t0 = time.perf_counter()
        llm.batch([stories[i] + " there" for i in slots])
        return len(slots) * 64 / (time.perf_counter() - t0)

    fillers = engine.stats()["fillers"]
    _, m = interleave(3, lambda: rate([0, 1, 2, 3]), apart=lambda: rate([0, 2, 4, 6]))
    lines.append("| measure | tok/s | ratio to slots 0-3 (range over rounds) |\n|---|---|---|")
    lines.append(f"| slots 0, 2, 4, 6 | {m['apart'].value()} | {m['apart'].ratio()} |")
    lines.append(f"filler tokens: {engine.stats()['fillers'] - fillers} (without them, each pass splits in four)")
    print("\n".join(lines[-4:]), flush=True)


def section_invariant(threads: int, lines: list[str]) -> None:
    lines.append("\n## `batch_invariant=True` vs the default on gemma3 (its cost)\n")
    model = str(get("gemma3"))
    common: dict[str, Any] = {
        "model_path": model,
        "n_threads": threads,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "n_ctx": 1024,  # the default's 8 slots share it: room for 8 prompts plus 64 tokens each
        "max_tokens": 64,
        "ignore_eos": True,
    }
    llms = {(inv, n): LlamaCpp(batch_invariant=inv, n_seq=n, **common) for inv in (False, True) for n in (1, 8)}
    for llm in llms.values():
        llm.invoke(STORY, max_tokens=4)  # load
    prompts = [f"{STORY} (variant {i})" for i in range(8)]

    def batch_rate(llm: LlamaCpp) -> float:
        llm.load().clear_cache()
        t0 = time.perf_counter()
        llm.batch(prompts)
        return 8 * 64 / (time.perf_counter() - t0)

    lines.append("| measure | batch_invariant tok/s | ratio to the default (range over rounds) |\n|---|---|---|")
    lines_text = " ".join(f"Line {i}: the tide rises and falls." for i in range(30))
    for label, text, rounds in (("a story", STORY, 5), ("text that repeats its prompt", lines_text, 3)):
        _, m = interleave(
            rounds,
            lambda text=text: stream_rate(llms[False, 1], text, 128, ignore_eos=True),  # type: ignore[misc]
            invariant=lambda text=text: stream_rate(llms[True, 1], text, 128, ignore_eos=True),  # type: ignore[misc]
        )
        lines.append(f"| one stream, tg128 ({label}) | {m['invariant'].value()} | {m['invariant'].ratio()} |")
    _, batch = interleave(3, lambda: batch_rate(llms[False, 8]), invariant=lambda: batch_rate(llms[True, 8]))
    lines.append(f"| batch() of 8, 64 tokens each | {batch['invariant'].value()} | {batch['invariant'].ratio()} |")
    print("\n".join(lines[-5:]), flush=True)
