"""How long an async call stalls the event loop: the longest gap between the ticks of a 5 ms asyncio ticker
that runs while the call does (issue 24). Each measure runs in a fresh process, so that the call is the
first one: the model is loaded, the template worker started, everything prepared for the first time.

    python -m tests.stall chat MODEL.gguf      # {"gap_ms": ..., "ticks": ...}: the first astream of ChatLlamaCpp
    python -m tests.stall llm MODEL.gguf       # LlamaCpp's first astream
    python -m tests.stall embed MODEL.gguf     # LlamaCppEmbeddings' first aembed_documents, then aembed_query
    python -m tests.stall chat MODEL.gguf --on-loop   # the blocking steps run on the loop, as before issue 24
    python -m tests.stall idle -                # no call for 3 s: the machine's own noise

Used by tests/integration/test_async_stall.py and the benchmarks' `stall` section.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
TICK_S = 0.005
PROMPT = "Write one sentence about the sea."
_T = TypeVar("_T")


async def longest_gap_ms(call: Callable[[], Awaitable[object]]) -> tuple[float, int]:
    """The longest interval between two ticks of a `TICK_S` ticker while `call()` runs (ms), and the tick count."""
    done = asyncio.Event()
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticks = asyncio.ensure_future(ticker())
    await asyncio.sleep(TICK_S * 2)  # the ticker is running before the call starts
    try:
        await call()
    finally:
        done.set()
        await ticks
    return max(gaps) * 1000, len(gaps)


def _calls(kind: str, model: str, fields: dict[str, Any]) -> Callable[[], Awaitable[object]]:
    from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings

    if kind == "idle":  # no call: the machine's own noise, the floor of any measure

        async def idle() -> None:
            await asyncio.sleep(3)

        return idle
    settings: dict[str, Any] = {"model_path": model, "verbose": False, **fields}
    if kind == "embed":
        embeddings = LlamaCppEmbeddings(**settings)

        async def embed() -> None:
            await embeddings.aembed_documents(["The sea is calm.", "Waves break on the shore."])
            await embeddings.aembed_query("the sea")

        return embed
    generator = (ChatLlamaCpp if kind == "chat" else LlamaCpp)(**settings, temperature=0, max_tokens=16)

    async def stream() -> None:
        async for _ in generator.astream(PROMPT):
            pass

    return stream


async def _inline(fn: Callable[[], _T], abandon: Callable[[_T], None] | None = None) -> _T:
    return fn()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("chat", "llm", "embed", "idle"))
    parser.add_argument("model")
    parser.add_argument("--fields", default="{}", help="more constructor arguments, as JSON")
    parser.add_argument("--on-loop", action="store_true", help="run the blocking steps on the loop (as before)")
    args = parser.parse_args()
    if args.on_loop:
        import langchain_llamacpp._offloop as _offloop

        _offloop.off_loop = _inline  # type: ignore[assignment]  # the steps run where they are called
    # Constructing is not part of the call (it reads 4 bytes of the file).
    call = _calls(args.kind, args.model, json.loads(args.fields))
    gap, ticks = asyncio.run(longest_gap_ms(call))
    print(json.dumps({"gap_ms": round(gap, 1), "ticks": ticks}))
    return 0


def measure(
    kind: str, model: str, on_loop: bool = False, fields: dict[str, Any] | None = None, timeout: float = 600
) -> float:
    """The longest gap (ms) of the first call of `kind` on `model`, measured in a fresh process."""
    args = [sys.executable, "-m", "tests.stall", kind, model, "--fields", json.dumps(fields or {})]
    args += ["--on-loop"] if on_loop else []
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["gap_ms"])


if __name__ == "__main__":
    sys.exit(main())
