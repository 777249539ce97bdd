"""The server under load, started as users start it (`python -m langchain_llamacpp.server`, its own process):
32 concurrent streaming clients of which a quarter go away mid-stream, then every place free and the next
request correct; the engine's own busy slots and queue in /metrics; 1,000 mixed requests (chat, completions,
embeddings, streams, a few clients leaving) with the server's resident memory growing less than 20 MB after
a warm-up. Clients are the official `openai` package with `max_retries=0`, so that no retry hides an error."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

SLOTS = 8
CLIENTS = 32
WARM_UP = 100
REQUESTS = int(os.environ.get("SERVER_SOAK_REQUESTS", "1000"))  # as test_soak.py's SOAK_CALLS
MAX_GROWTH_BYTES = 20 << 20


@pytest.fixture(scope="module")
def server(smollm_path: str, nomic_path: str) -> Iterator[tuple[str, int]]:
    """(base URL, process id) of a server on SmolLM2 with 8 slots and room for all 32 clients in its queue,
    and nomic-embed-text."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "langchain_llamacpp.server", "--model", f"smollm2={smollm_path}"]
    args += ["--embedding-model", f"nomic={nomic_path}"]
    args += ["--port", str(port), "--n-seq", str(SLOTS), "--n-ctx", "8192", "--max-queue", str(CLIENTS)]
    process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.5)
        yield url, process.pid
    finally:
        process.terminate()
        # uvicorn shuts down cleanly, then ends by the signal it caught (-SIGTERM), as a server should.
        assert process.wait(60) in (0, -signal.SIGTERM)


def _metric(text: str, family: str) -> int:
    for line in text.splitlines():
        if line.startswith(f'llamacpp_{family}{{model="smollm2"}}'):
            return int(line.split()[-1])
    raise AssertionError(f"no {family} in /metrics")


def _in_flight(url: str) -> int:
    return _metric(httpx.get(f"{url}/metrics").text, "requests_in_flight")


def _reply(url: str) -> str:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Name three primary colors."}]
    reply = client.chat.completions.create(model="smollm2", messages=messages, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    return reply.choices[0].message.content or ""


async def _clients(url: str) -> tuple[list[int], int]:
    """The tokens each finishing client got, and how many clients left mid-stream."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)

    async def one(i: int) -> int | None:
        leaves = i % 4 == 0  # a quarter leave after their first chunk, mid-way through a long reply
        stream = await client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Tell story number {i} about a cat."}],
            max_tokens=400 if leaves else 24,
            extra_body={"ignore_eos": True},
            stream=True,
            stream_options={"include_usage": True},
        )
        tokens = 0
        async for chunk in stream:
            if leaves:
                await stream.close()
                return None
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens

    results = await asyncio.gather(*(one(i) for i in range(CLIENTS)))
    await client.close()
    return [r for r in results if r is not None], sum(r is None for r in results)


def test_clients_that_leave_free_their_places(server: tuple[str, int]) -> None:
    url, _ = server
    before = _reply(url)
    finished, left = asyncio.run(_clients(url))
    assert left == CLIENTS // 4 and finished == [24] * (CLIENTS - left)
    deadline = time.monotonic() + 30
    while _in_flight(url):  # a stream closed by its client ends at the server's next token or at once
        assert time.monotonic() < deadline, "requests still in flight after their clients left"
        time.sleep(0.2)
    assert _reply(url) == before  # greedy: the same reply as before the load


async def _engine_load(url: str, streams: int) -> set[tuple[int, int]]:
    """(busy slots, queue length) as /metrics reports them while `streams` long streams run at once."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=600)
    seen: set[tuple[int, int]] = set()

    async def one(i: int) -> None:
        messages: Any = [{"role": "user", "content": f"Count to {i + 10}."}]
        stream = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=24, extra_body={"ignore_eos": True}, stream=True
        )
        async for _ in stream:
            pass

    tasks = [asyncio.ensure_future(one(i)) for i in range(streams)]
    async with httpx.AsyncClient(base_url=url) as http:
        while not all(t.done() for t in tasks):
            text = (await http.get("/metrics")).text
            seen.add((_metric(text, "slots_busy"), _metric(text, "queue_length")))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks)
        text = (await http.get("/metrics")).text
        seen.add((_metric(text, "slots_busy"), _metric(text, "queue_length")))
    await client.close()
    return seen


def test_metrics_read_the_engines_slots_and_queue(server: tuple[str, int]) -> None:
    url, _ = server
    seen = asyncio.run(_engine_load(url, SLOTS + 4))
    # Every slot busy with four waiting in the engine's own queue, at some point; nothing at the end.
    assert (SLOTS, 4) in seen, sorted(seen)
    # (Before the engine places them, all may wait in its queue at once.)
    assert all(busy <= SLOTS and busy + queued <= SLOTS + 4 for busy, queued in seen), sorted(seen)
    assert _metric(httpx.get(f"{url}/metrics").text, "slots_busy") == 0
    assert "llamacpp_engine_slots_busy" not in httpx.get(f"{url}/metrics").text  # a gauge, not a counter


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _mixed(url: str, first: int, count: int, concurrency: int = SLOTS) -> None:
    """`count` short requests, `concurrency` at a time (a client per slot): chat, completions, embeddings, chat
    streams read to the end, and one stream in 50 left after its first chunk."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        messages: Any = [{"role": "user", "content": f"Say {i}."}]
        async with gate:
            if i % 5 == 0:
                reply = await client.chat.completions.create(model="smollm2", messages=messages, max_tokens=2)
                assert reply.choices[0].finish_reason in ("stop", "length")
            elif i % 5 == 1:
                text = await client.completions.create(model="smollm2", prompt=f"{i} plus one is", max_tokens=2)
                assert text.usage is not None and text.usage.completion_tokens >= 1
            elif i % 5 == 2:
                vectors = await client.embeddings.create(model="nomic", input=[f"document {i}", "a query"])
                assert len(vectors.data) == 2
            else:
                stream = await client.chat.completions.create(
                    model="smollm2", messages=messages, max_tokens=3, stream=True
                )
                async for _ in stream:
                    if i % 50 == 3:  # a client that leaves
                        await stream.close()
                        break

    await asyncio.gather(*(one(i) for i in range(first, first + count)))
    await client.close()


@pytest.mark.timeout(1800)  # a machine shared with other jobs runs this at a fraction of its speed
def test_a_thousand_requests_keep_memory_flat(server: tuple[str, int]) -> None:
    url, pid = server
    asyncio.run(_mixed(url, 0, WARM_UP))
    before = _rss_bytes(pid)
    started = time.monotonic()
    asyncio.run(_mixed(url, WARM_UP, REQUESTS))
    after = _rss_bytes(pid)
    print(f"{REQUESTS} requests in {time.monotonic() - started:.0f} s, RSS {before >> 20} -> {after >> 20} MiB")
    assert after - before < MAX_GROWTH_BYTES, f"resident memory grew {(after - before) / 2**20:.1f} MiB"
    deadline = time.monotonic() + 30
    while _in_flight(url):
        assert time.monotonic() < deadline, "requests still in flight"
        time.sleep(0.2)
