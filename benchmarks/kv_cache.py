"""A quantized KV cache against f16: its memory (llama.cpp's own accounting), decode speed, and quality as the
perplexity of a fixed text through the low-level API, first checked against llama.cpp's `llama-perplexity`
on the same text and settings. And the memory of the default slots on a sliding-window model (Gemma 3)."""

from __future__ import annotations

import logging
import math
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from benchmarks.common import ROOT, interleave
from langchain_llamacpp import LlamaCpp, native
from tests.llama_tools import reference_tool
from tests.models import get

# A fixed text, pinned with the vendored llama.cpp: its completion tool's manual, mostly prose.
TEXT = ROOT / "vendor" / "llama.cpp" / "tools" / "completion" / "README.md"
N_CTX, N_CHUNKS = 512, 8  # llama-perplexity's chunks: 8 x 512 = 4096 tokens, the second half of each scored
KV_SIZE = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB")
TYPES = ("f16", "q8_0", "q4_0")


@contextmanager
def kv_mib() -> Iterator[list[float]]:
    """The KV cache sizes llama.cpp logs for the contexts made inside (MiB, one per cache: a sliding-window
    model has two)."""
    sizes: list[float] = []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if m := KV_SIZE.search(record.getMessage()):
                sizes.append(float(m[1]))

    logger = logging.getLogger("langchain_llamacpp.llama_cpp")
    handler, level = Handler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield sizes
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def perplexity(model: native.Model, tokens: list[int], threads: int, cache_type: str) -> float:
    """llama-perplexity's figure, through the low-level API: each chunk of N_CTX tokens (its first made
    BOS) evaluated from an empty cache, the negative log-likelihood of the tokens of its second half."""
    engine = native.create_engine(
        model, n_ctx=N_CTX, n_batch=N_CTX, n_seq=1, n_threads=threads, cache_type_k=cache_type, cache_type_v=cache_type
    )
    first, nll, count = N_CTX // 2, 0.0, 0
    for chunk in range(N_CHUNKS):
        part = tokens[chunk * N_CTX : (chunk + 1) * N_CTX]
        if model.add_bos:  # as llama-perplexity: the chunk's first token made BOS where the model starts with one
            part[0] = model.bos_token
        engine.kv_remove(0, 0)
        engine.evaluate(0, part[:first])
        for start in range(first, N_CTX - 1, 128):  # 128 rows of logits at a time
            stop = min(start + 128, N_CTX - 1)
            logits = np.asarray(engine.evaluate(0, part[start:stop], all_logits=True), dtype=np.float64)
            top = logits.max(axis=1)
            log_z = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
            targets = part[start + 1 : stop + 1]
            nll += float((log_z - logits[np.arange(len(targets)), targets]).sum())
            count += len(targets)
    engine.kv_remove(0, 0)
    return math.exp(nll / count)


def llama_perplexity(model: str, threads: int, cache_type: str) -> float:
    args = [str(reference_tool("llama-perplexity")), "-m", model, "-f", str(TEXT), "-c", str(N_CTX)]
    args += ["-b", str(N_CTX), "--chunks", str(N_CHUNKS), "-t", str(threads), "-ctk", cache_type, "-ctv", cache_type]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    found = re.search(r"Final estimate: PPL = ([\d.]+)", done.stdout + done.stderr)
    assert found, done.stderr[-2000:]
    return float(found[1])


def section_kv_cache(threads: int, lines: list[str]) -> None:
    model_file = str(get("smollm2"))
    lines.append(f"\n## KV cache types: `q8_0` and `q4_0` K and V against `f16` (SmolLM2-135M, {N_CHUNKS} x {N_CTX})\n")
    model = native.load_model(model_file)
    tokens = list(model.tokenize(TEXT.read_text(), add_special=True))
    assert len(tokens) >= N_CHUNKS * N_CTX
    memory: dict[str, float] = {}
    llms: dict[str, LlamaCpp] = {}
    for t in TYPES:
        with kv_mib() as sizes:
            llm = LlamaCpp(model_path=model_file, n_ctx=4096, n_seq=1, n_threads=threads, temperature=0,
                           repeat_penalty=1.0, cache_type_k=t, cache_type_v=t)  # fmt: skip
            llm.load()
        memory[t], llms[t] = sum(sizes), llm
        print(f"{t}: KV {memory[t]:.2f} MiB", flush=True)
    ours, theirs = {}, {}
    for t in TYPES:  # each figure printed as it comes: on a loaded machine this section takes long
        ours[t] = perplexity(model, tokens, threads, t)
        print(f"{t}: perplexity {ours[t]:.4f}", flush=True)
    for t in TYPES:
        theirs[t] = llama_perplexity(model_file, threads, t)
        print(f"{t}: llama-perplexity {theirs[t]:.4f}", flush=True)
    prompt = model.detokenize(tokens[:1000])

    def rate(t: str) -> float:
        stamps = [time.perf_counter() for piece in llms[t].stream(prompt, max_tokens=64, ignore_eos=True) if piece]
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    for t in TYPES:
        rate(t)  # the prompt, evaluated once and cached
    f16_rate, decode = interleave(4, lambda: rate("f16"), q8_0=lambda: rate("q8_0"), q4_0=lambda: rate("q4_0"))
    lines.append(
        f"Perplexity of `{TEXT.relative_to(ROOT)}` (its first {N_CHUNKS * N_CTX} tokens), llama-perplexity's "
        "method through the low-level API (`create_engine`, `evaluate`) and by `llama-perplexity` itself "
        f"(`-c {N_CTX} -b {N_CTX} --chunks {N_CHUNKS} -ctk T -ctv T`); KV memory at n_ctx 4096, one slot, as "
        "llama.cpp's log accounts it; decode through `stream()`, 64 tokens after a 1,000-token prompt.\n"
    )
    header = (
        "cache",
        "perplexity (ours)",
        "llama-perplexity",
        "ours vs it",
        "vs f16",
        "KV MiB",
        "vs f16",
        "decode tok/s",
    )
    lines.append(f"| {' | '.join(header)} | vs f16 |\n|{'---|' * (len(header) + 1)}")
    for t in TYPES:
        speed = f"{f16_rate:.1f} | 1.000" if t == "f16" else f"{decode[t].value()} | **{decode[t].ratio()}**"
        lines.append(
            f"| {t} | {ours[t]:.4f} | {theirs[t]:.4f} | {ours[t] / theirs[t] - 1:+.3%} | "
            f"**{ours[t] / ours['f16'] - 1:+.2%}** | {memory[t]:.2f} | **{memory[t] / memory['f16']:.3f}** | {speed} |"
        )
    print("\n".join(lines[-6:]), flush=True)
    section_sliding_window(threads, lines)


def _gemma_kv(model: str, threads: int, **settings: Any) -> float:
    with kv_mib() as sizes:
        LlamaCpp(model_path=model, n_ctx=4096, n_threads=threads, **settings).load()
    return sum(sizes)


def section_sliding_window(threads: int, lines: list[str]) -> None:
    model = str(get("gemma3"))
    lines.append("\n## Gemma 3 (sliding window) at n_ctx 4096: KV memory of the default 8 slots and of one\n")
    lines.append("| KV cache | 8 slots (default) | 1 slot |\n|---|---|---|")
    for t in ("f16", "q8_0"):
        eight = _gemma_kv(model, threads, cache_type_k=t, cache_type_v=t)
        one = _gemma_kv(model, threads, cache_type_k=t, cache_type_v=t, n_seq=1)
        lines.append(f"| {t} | {eight:.1f} MiB | {one:.1f} MiB |")
    print("\n".join(lines[-5:]), flush=True)
