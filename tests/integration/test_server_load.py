"""The server under load, started as users start it (`python -m langchain_llamacpp.server`, its own process):
32 concurrent streaming clients of which a quarter go away mid-stream, then every place free and the next
request correct. (The issue's second load test, 1,000 requests with resident memory growing < 20 MB, is not
here yet: it did not finish within 28 minutes on the machine at load 25, so it is unverified.) Clients are
the official `openai` package with `max_retries=0`, so that no retry hides an error."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration

SLOTS = 8
CLIENTS = 32


@pytest.fixture(scope="module")
def server(smollm_path: str) -> Iterator[tuple[str, int]]:
    """(base URL, process id) of a server on SmolLM2 with 8 slots and room for all 32 clients in its queue."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [sys.executable, "-m", "langchain_llamacpp.server", "--model", f"smollm2={smollm_path}"]
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


def _in_flight(url: str) -> int:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('llamacpp_requests_in_flight{model="smollm2"}'):
            return int(line.split()[-1])
    raise AssertionError("no requests_in_flight in /metrics")


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
