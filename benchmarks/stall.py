"""The stall section: how long the first async call of a fresh instance stops the event loop (issue 24).

Each measure is the longest gap between the ticks of a 5 ms asyncio ticker during the call, in a fresh
process (`tests/stall.py`), so that the call loads the model and starts the template worker. "before"
runs the same code with the blocking steps on the loop (`--on-loop`: what the async methods did before
they moved them to worker threads); "idle" is the ticker alone, the machine's own noise. A shared machine
slows any thread now and then, so the figures are medians over rounds, each round measuring every variant.
"""

from __future__ import annotations

import statistics
from typing import Any

from tests.models import get
from tests.stall import measure

ROUNDS = 3

# (what is measured, tests.stall kind, model, whether it ran on the loop before issue 24)
CALLS = (
    ("ChatLlamaCpp first astream, Qwen2.5-Coder-1.5B", "chat", "qwen15", True),
    ("ChatLlamaCpp first astream, Qwen2.5-Coder-0.5B", "chat", "qwen", True),
    ("LlamaCpp first astream, Qwen2.5-Coder-1.5B", "llm", "qwen15", True),
    # aembed_* ran in the executor already: no "before" to show.
    ("LlamaCppEmbeddings first aembed_documents + aembed_query, nomic-embed", "embed", "nomic", False),
)


def _figure(gaps: list[float]) -> str:
    return f"{statistics.median(gaps):.0f} ({min(gaps):.0f}-{max(gaps):.0f})"


def section_stall(threads: int, lines: list[str], rounds: int = ROUNDS, fields: dict[str, Any] | None = None) -> None:
    lines.append("\n## Event-loop stall of the first async call (longest gap of a 5 ms ticker, ms)\n")
    settings: dict[str, Any] = {"n_threads": threads, **(fields or {})}
    idle: list[float] = []
    rows = []
    for label, kind, name, was_on_loop in CALLS:
        model = str(get(name))
        before: list[float] = []
        after: list[float] = []
        for _ in range(rounds):
            idle.append(measure("idle", "-"))
            if was_on_loop:
                before.append(measure(kind, model, on_loop=True, fields=settings))
            after.append(measure(kind, model, fields=settings))
        rows.append(f"| {label} | {_figure(before) if before else 'in the executor already'} | {_figure(after)} |")
    lines.append("| call | before: on the loop, median (range) | now: in worker threads |\n|---|---|---|")
    lines.extend(rows)
    lines.append(
        f"\nThe ticker alone (no call) over the same rounds: {_figure(idle)} ms. Goal 50 ms; "
        "tests/integration/test_async_stall.py asserts 100 ms."
    )
    print("\n".join(lines[-len(rows) - 4 :]), flush=True)
