"""No async call stalls the event loop, the first one included (issue 24): a 5 ms ticker keeps ticking
while a fresh instance loads its model, starts its template worker and streams its first reply.

Before, the first `astream` of ChatLlamaCpp on Qwen2.5-Coder-1.5B stopped the loop for 1.1-2.4 s here. The
bound (100 ms, the issue's; the goal is 50 ms) is far from that, but a shared machine can stall any thread
for a while: a measure over it is taken again, up to three times, and all of them are in the message.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from langchain_llamacpp import ChatLlamaCpp
from tests import models, stall
from tests.timing import SCALE

pytestmark = pytest.mark.integration

BOUND_MS = 100 * SCALE
TRIES = 3


@pytest.fixture(scope="module")
def qwen15_path() -> str:
    return str(models.get("qwen15"))


def _assert_no_stall(kind: str, model: str) -> None:
    gaps: list[float] = []
    while len(gaps) < TRIES:
        gaps.append(stall.measure(kind, model))
        if gaps[-1] <= BOUND_MS:
            return
    pytest.fail(f"the first {kind} call stalled the event loop for {gaps} ms, over {BOUND_MS:g} ms each time")


def test_first_chat_astream_does_not_stall(qwen15_path: str) -> None:
    _assert_no_stall("chat", qwen15_path)


def test_first_llm_astream_does_not_stall(qwen15_path: str) -> None:
    _assert_no_stall("llm", qwen15_path)


def test_first_aembed_does_not_stall(nomic_path: str) -> None:
    _assert_no_stall("embed", nomic_path)


async def test_cancelled_while_loading(qwen15_path: str) -> None:
    """Cancelled while the model loads, the call raises CancelledError at once; the load completes in
    its thread, and the next call uses the loaded engine."""
    chat = ChatLlamaCpp(model_path=qwen15_path, temperature=0, max_tokens=4, n_ctx=512, n_seq=1)

    async def first() -> None:
        async for _ in chat.astream("hi"):
            pass

    task = asyncio.ensure_future(first())
    await asyncio.sleep(0.05)  # loading 1 GB takes far longer
    assert chat._loaded is None
    task.cancel()
    cancelled_at = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - cancelled_at < 0.5 * SCALE  # not after the load
    for _ in range(600):
        if chat._loaded is not None:
            break
        await asyncio.sleep(0.1)
    assert chat._loaded is not None
    reply = await chat.ainvoke("Say hi.")
    assert reply.content
