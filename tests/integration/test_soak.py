"""Soak: thousands of mixed calls on the smallest models, and afterwards the process is the size it was.

Once warm (engines loaded, caches and thread pools made), memory (RSS), threads, open file descriptors
and child processes (ChatLlamaCpp renders templates in one) must stay flat over every kind of call:
plain, streamed and closed early, async and cancelled mid-stream, structured output, timed out,
refused, with new instances made and dropped, embeddings. SOAK_CALLS makes the run longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings

pytestmark = pytest.mark.integration

CALLS = int(os.environ.get("SOAK_CALLS", "1000"))
WARMUP = max(CALLS // 10, min(100, CALLS // 2))
# RSS may move by allocator noise (glibc arenas, Python's free lists), not by a leak of even a few
# bytes per call over thousands of calls.
RSS_GROWTH_MB = 20.0
EXECUTOR_THREADS = 4
PROMPTS = [f"Question {i}: name a {thing}." for i, thing in enumerate(["fruit", "river", "color", "tree", "city"] * 4)]


class Answer(BaseModel):
    ok: bool


@dataclass(frozen=True)
class Snapshot:
    rss_mb: float
    threads: int
    fds: int
    children: int


def snapshot() -> Snapshot:
    gc.collect()
    with open("/proc/self/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    me = str(os.getpid())
    children = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
                # The field after the parenthesized name: state, then the parent's pid.
                children += f.read().rsplit(")", 1)[1].split()[1] == me
    return Snapshot(rss_kb / 1024, len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd")), children)


# AsyncRequest.close() used to close its wake-up pipe while the engine could still write to it: the number
# went to the next file the process opened (in the soak, a chat-template worker's pipe, whose protocol the
# stray byte broke). Its pipes are pooled and never closed now, as the blocking path's are.
def test_cancelled_async_stream_writes_nothing_to_reused_descriptors(smollm_path: str) -> None:
    chat = ChatLlamaCpp(model_path=smollm_path, temperature=0, max_tokens=64, n_ctx=1024, verbose=False)

    async def cancelled_mid_stream() -> None:
        async def consume() -> None:
            async for _ in chat.astream("Name a fruit."):
                started.set()

        started = asyncio.Event()
        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    loop = asyncio.new_event_loop()  # kept open: the lowest free descriptors are then the stream's
    try:
        for _ in range(10):
            loop.run_until_complete(cancelled_mid_stream())
            read_fd, write_fd = os.pipe()  # the numbers the stream's pipe just gave back
            try:
                time.sleep(0.2)  # the engine's step ends; a late byte would arrive now
                os.set_blocking(read_fd, False)
                with pytest.raises(BlockingIOError):
                    os.read(read_fd, 16)
            finally:
                os.close(read_fd)
                os.close(write_fd)
    finally:
        loop.close()


def test_soak(smollm_path: str, nomic_path: str) -> None:
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")))
    settings = {"model_path": smollm_path, "temperature": 0, "n_ctx": 1024, "n_seq": 2, "verbose": False}
    chat = ChatLlamaCpp(max_tokens=4, **settings)
    # Same engine (same file and context settings), room for the JSON.
    structured = ChatLlamaCpp(max_tokens=24, **settings).with_structured_output(Answer)
    llm = LlamaCpp(max_tokens=4, **settings)
    embeddings = LlamaCppEmbeddings(model_path=nomic_path, verbose=False)
    loop = asyncio.new_event_loop()
    # asyncio's default executor (aembed_* run there) makes a thread per job that finds none idle, so its
    # thread count follows the most jobs seen at once, which the random schedule may raise late: a fixed
    # pool, all of whose threads exist before the baseline.
    executor = ThreadPoolExecutor(max_workers=EXECUTOR_THREADS)
    started_all = threading.Barrier(EXECUTOR_THREADS + 1)
    for _ in range(EXECUTOR_THREADS):
        executor.submit(started_all.wait)
    started_all.wait()
    loop.set_default_executor(executor)

    def prompt() -> str:
        return rng.choice(PROMPTS)

    def stream_closed_early() -> None:
        stream = chat.stream(prompt(), max_tokens=64)
        next(stream)
        stream.close()  # cancels the request; its slot is freed within a step

    async def cancelled_mid_stream() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in chat.astream(prompt(), max_tokens=64):
                started.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(started.wait(), 60)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def concurrent() -> None:
        await asyncio.gather(chat.ainvoke(prompt()), cancelled_mid_stream(), embeddings.aembed_query(prompt()))

    def timed_out() -> None:
        with contextlib.suppress(TimeoutError):
            chat.invoke(prompt(), max_tokens=64, timeout=0.001)

    def refused() -> None:
        with pytest.raises(ValueError, match="grammar"):
            chat.invoke(prompt(), grammar="root ::= undefined")

    def new_instance() -> None:
        with ChatLlamaCpp(max_tokens=2, **settings) as fresh:  # shares the engine; its own template process
            fresh.invoke(prompt())

    calls: list[tuple[str, int, Callable[[], object]]] = [
        ("invoke", 20, lambda: chat.invoke(prompt())),
        ("llm invoke", 5, lambda: llm.invoke(prompt())),
        ("stream closed early", 15, stream_closed_early),
        ("async cancelled mid-stream", 15, lambda: loop.run_until_complete(cancelled_mid_stream())),
        ("async concurrent", 5, lambda: loop.run_until_complete(concurrent())),
        ("structured output", 3, lambda: structured.invoke(prompt())),
        ("timed out", 5, timed_out),
        ("refused", 5, refused),
        ("new instance", 2, new_instance),
        ("embed documents", 10, lambda: embeddings.embed_documents([prompt(), prompt(), prompt()])),
        ("embed query", 5, lambda: embeddings.embed_query(prompt())),
        ("async embed", 5, lambda: loop.run_until_complete(embeddings.aembed_query(prompt()))),
    ]
    names = [name for name, _, _ in calls]
    weights = [weight for _, weight, _ in calls]
    functions = {name: fn for name, _, fn in calls}

    counts: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    t0 = time.monotonic()
    try:
        for name in names:  # each kind once before the baseline
            functions[name]()
        for i in range(CALLS):
            if i == WARMUP:
                base = snapshot()
                samples = [base]
            elif i > WARMUP and (i - WARMUP) % max(1, (CALLS - WARMUP) // 10) == 0:
                samples.append(snapshot())
            name = rng.choices(names, weights)[0]
            started = time.monotonic()
            functions[name]()
            counts[name] += 1
            spent[name] += time.monotonic() - started
        end = snapshot()
    finally:
        loop.close()
    seconds = time.monotonic() - t0
    trend = ", ".join(f"{s.rss_mb - base.rss_mb:+.1f}" for s in [*samples, end])
    per_kind = ", ".join(f"{name} {counts[name]} x {spent[name] / counts[name] * 1000:.0f} ms" for name in counts)
    summary = f"{CALLS} calls in {seconds:.0f} s ({per_kind}); RSS growth after warm-up, MB: {trend}; {base} -> {end}"
    print(summary)
    assert end.rss_mb - base.rss_mb < RSS_GROWTH_MB, summary
    assert (end.threads, end.fds, end.children) == (base.threads, base.fds, base.children), summary
