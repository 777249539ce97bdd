"""Decode through invoke() vs llama-bench tg128, both shielded from the machine's other load.

    python -m benchmarks.decode_shielded [--rounds 6] [--n-ctx 256] [--model gemma3] [--reference]

On a shared machine (CI, several agents building) decode speed moves by 2x within minutes, which hides
differences of a few percent. Run as root, this process (and llama-bench, its child) takes SCHED_FIFO, so
the two sides see the same, nearly idle, cores. Only invoke() can be measured so: a streaming reader at the
same priority cannot run before the engine's threads pause, so stream()'s timestamps would all come at the
end (the decode section of `./dev bench` measures stream()). The reference is llama-bench from the same
build folder (no OpenMP, as the extension), or with --reference llama.cpp's tools as upstream builds them
(OpenMP), alternated round by round; the ratio is the median of the rounds' ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import llama_bench  # noqa: E402
from benchmarks.engine import invoke_rate  # noqa: E402
from langchain_llamacpp import LlamaCpp  # noqa: E402
from tests.llama_tools import reference_tool  # noqa: E402
from tests.models import get  # noqa: E402


def shield() -> str:
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (PermissionError, AttributeError, OSError) as e:
        return f"not shielded ({e.__class__.__name__}): ratios carry the machine's load"
    return "SCHED_FIFO 10 (shielded from other load)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n-ctx", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="gemma3")
    parser.add_argument("--reference", action="store_true", help="llama-bench built as upstream builds it")
    args = parser.parse_args()
    print(shield(), flush=True)
    model = str(get(args.model))
    tool = str(reference_tool("llama-bench")) if args.reference else None
    llm = LlamaCpp(
        model_path=model, n_threads=args.threads, temperature=0, repeat_penalty=1.0, n_ctx=args.n_ctx, n_seq=1
    )
    llm.invoke("Once", max_tokens=4)  # load
    ratios = []
    for _ in range(args.rounds):
        reference = llama_bench(model, args.threads, 0, 128, tool=tool)["tg128"]
        ours = invoke_rate(llm, "Once", 128)
        ratios.append(ours / reference)
        print(f"llama-bench tg128 {reference:.1f}, invoke() {ours:.1f} tok/s: {ours / reference:.3f}", flush=True)
    print(f"median ratio {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
