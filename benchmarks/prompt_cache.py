"""The prompt cache on disk (`prompt_cache_dir`): time to first token of a request in a new process whose
3,000-token prefix an earlier process saved, against the same request evaluated cold in a new process.

Each process loads the model first; the time is from the call to its first token (reading and checking
the file, restoring the state, evaluating the rest). The file was just written, so it comes from the page
cache, as it would after a restart. Both answers are greedy and compared whole. With one slot (n_seq=1) a
restore stops at the cold run's last chunk boundary, so the answers are the same; with the default 8 slots it
restores the whole match (a cold run's batch shapes depend on its neighbours there anyway).

    python -m benchmarks.prompt_cache child <json>   # one process's measure (run by the section)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import interleave
from tests.models import get
from tests.texts import chatml, committee_minutes

# A document of ~3,000 tokens under discussion, and two questions about it.
DOCUMENT = committee_minutes(66)
# As chat turns (both models are ChatML instruct models): a bare completion ends at once on these.
FIRST = chatml(DOCUMENT + "\nWhich section mentions item 7?")
SECOND = chatml(DOCUMENT + "\nWhat did the committee agree to do about each item?")


def child(settings: dict[str, Any], prompt: str) -> dict[str, Any]:
    from langchain_llamacpp import LlamaCpp

    llm = LlamaCpp(**settings)
    llm.load()
    start = time.perf_counter()
    first = None
    pieces = []
    for piece in llm.stream(prompt):
        first = first or time.perf_counter()
        pieces.append(piece)
    n_prompt = len(llm.get_token_ids(prompt))
    return {"ttft": (first or time.perf_counter()) - start, "text": "".join(pieces), "n_prompt": n_prompt}


def _run(settings: dict[str, Any], prompt: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.prompt_cache", "child", json.dumps([settings, prompt])],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    return json.loads(done.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def measure(name: str, threads: int, rounds: int, n_seq: int = 1, **extra: Any) -> tuple[list[str], dict[str, Any]]:
    model = str(get(name))
    base = {
        "model_path": model,
        "n_threads": threads,
        "n_ctx": 4096,
        "n_seq": n_seq,
        "max_tokens": 24,
        "temperature": 0,
        **extra,
    }
    with tempfile.TemporaryDirectory() as tmp:
        cached = {**base, "prompt_cache_dir": tmp}
        saved = _run(cached, FIRST)  # the earlier process: its sequence is saved before it exits
        mib = sum(f.stat().st_size for f in Path(tmp).glob("*.lcpc")) / 2**20
        answers: dict[str, list[str]] = {"cold": [], "warm": []}

        def one(settings: dict[str, Any], side: str) -> float:
            out = _run(settings, SECOND)
            answers[side].append(out["text"])
            print(f"{name} {side}: first token after {out['ttft']:.3f} s", flush=True)
            return float(out["ttft"])

        cold, m = interleave(rounds, lambda: one(base, "cold"), warm=lambda: one(cached, "warm"))
    same = set(answers["cold"]) == set(answers["warm"]) and len(set(answers["cold"])) == 1
    settings = "".join(f", {k}={v}" for k, v in extra.items())
    row = [
        f"| {name} | {n_seq}{settings} | {saved['n_prompt']} | {mib:.0f} | {cold:.3f} "
        f"| {m['warm'].value('{:.3f}')} | **{m['warm'].ratio()}** | {'yes' if same else 'NO'} |"
    ]
    return row, {"answers": answers}


def section_prompt_cache(threads: int, lines: list[str]) -> None:
    lines.append("\n## Prompt cache on disk: first token in a new process, prefix saved by an earlier one\n")
    lines.append(
        "| model | slots (n_seq) | prompt tokens | file MiB | cold TTFT s | restored TTFT s | ratio (range over "
        "rounds) | greedy answers identical |\n|---|---|---|---|---|---|---|---|"
    )
    for name, n_seq, extra in (
        ("smollm2", 1, {}),
        ("smollm2", 1, {"batch_invariant": True}),
        ("smollm2", 8, {}),
        ("qwen", 1, {}),
        ("qwen", 8, {}),
    ):
        rows, _ = measure(name, threads, 3, n_seq, **extra)
        lines += rows
        print(lines[-1], flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        settings, prompt = json.loads(sys.argv[2])
        print(json.dumps(child(settings, prompt)))
    else:
        out: list[str] = []
        section_prompt_cache(int(sys.argv[1]) if len(sys.argv) > 1 else 2, out)
        print("\n".join(out))
