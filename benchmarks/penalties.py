"""The repetition penalties on the window's tokens (the engine's `Penalties`) against the same penalties in
llama.cpp's sampler chain, which looks every token of the vocabulary up in a hash map: the default sampling
(`repeat_penalty` 1.1, langchain-community's), in one process, interleaved. A finite no-op logit bias makes the
engine leave the penalties in the chain (llama.cpp applies a bias before them), which is the reference.

    python -m benchmarks.penalties gemma3 0 8    # model, temperature, streams (1: stream(), more: batch())
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from langchain_llamacpp import LlamaCpp
from tests import models

TOKENS = 64


def main() -> int:
    name, temperature, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    llm = LlamaCpp(model_path=str(models.get(name)), n_threads=2, n_ctx=4096, temperature=temperature, seed=1,
                   max_tokens=TOKENS, ignore_eos=True)  # fmt: skip
    prompts = [f"Once upon a time, in a village number {i}," for i in range(n)]

    def rate(**options: Any) -> float:
        started = time.perf_counter()
        if n == 1:
            for _ in llm.stream(prompts[0], **options):
                pass
        else:
            llm.batch(prompts, **options)
        return n * TOKENS / (time.perf_counter() - started)

    chain = {"logit_bias": {50: 0.0}}
    rate(), rate(**chain)  # warm-up
    ours, reference = [], []
    for _ in range(5):
        ours.append(rate())
        reference.append(rate(**chain))
    ratios = [a / b for a, b in zip(ours, reference, strict=True)]
    print(
        f"| {name} | {temperature:g} | {n} | {statistics.median(ours):.1f} | {statistics.median(reference):.1f} | "
        f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
