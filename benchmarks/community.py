"""The same measurements as run.py, taken on langchain_community + llama-cpp-python.

Run by run.py with the interpreter that has those packages (`./dev community` builds one in
.venv-community from the same llama.cpp source distribution we vendor), one measurement per process so
that a crash (llama-cpp-python is not thread-safe under `batch()`) is reported, not fatal. Prints one JSON
object per line as figures become known; run.py reads them.

    python benchmarks/community.py SECTION --model PATH --threads N
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"

# Fields set so that both packages do the same work: the model's own RoPE base (theirs defaults to
# 10000, which changes gemma-3's output but not its speed), a 512-token batch as ours uses, silence.
COMMON = {"rope_freq_base": 0.0, "n_batch": 512, "verbose": False, "temperature": 0.0, "repeat_penalty": 1.0}


def emit(**figures: Any) -> None:
    print(json.dumps(figures), flush=True)


def llm(model: str, threads: int, **kw: Any) -> Any:
    from langchain_community.llms import LlamaCpp

    return LlamaCpp(model_path=model, n_threads=threads, **{**COMMON, **kw})


def stream_rate(model: Any, prompt: str, n: int, **kwargs: Any) -> float:
    """Tokens/s through stream(), from the first token to the last (prompt excluded)."""
    stamps = [time.perf_counter() for piece in model.stream(prompt, max_tokens=n, **kwargs) if piece]
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def decode(model: str, threads: int) -> None:
    m = llm(model, threads, n_ctx=512)
    m.invoke(STORY, max_tokens=4)  # load
    emit(decode=stream_rate(m, STORY, 128))


def prompt(model: str, threads: int) -> None:
    m = llm(model, threads, n_ctx=1024)
    text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(200))
    tokens = m.client.tokenize(text.encode())[:511]
    text = m.client.detokenize(tokens).decode()
    n = len(m.client.tokenize(text.encode()))
    rates = []
    for _ in range(2):  # the first one warms up, as llama-bench does
        m.client.reset()  # no prefix reuse: the whole prompt is evaluated
        t0 = time.perf_counter()
        m.invoke(text, max_tokens=1)
        rates.append(n / (time.perf_counter() - t0))
    emit(prompt=rates[-1], prompt_tokens=n)


def batch(model: str, threads: int) -> None:
    m = llm(model, threads, n_ctx=256, max_tokens=64)
    prompts = [f"{STORY} (variant {i})" for i in range(8)]
    m.invoke(prompts[0], max_tokens=1)  # load
    t0 = time.perf_counter()
    for p in prompts:
        m.invoke(p)
    emit(sequential=time.perf_counter() - t0)
    t0 = time.perf_counter()
    m.batch(prompts)  # LangChain's default: a thread per prompt, all on the one Llama object
    emit(batched=time.perf_counter() - t0)


def first_token_seconds(chat: Any, messages: list[tuple[str, str]]) -> tuple[float, str]:
    t0 = time.perf_counter()
    first = None
    text = ""
    for chunk in chat.stream(messages):
        if first is None and chunk.content:
            first = time.perf_counter() - t0
        text += str(chunk.content)
    assert first is not None
    return first, text


def cache(model: str, threads: int) -> None:
    from langchain_community.chat_models import ChatLlamaCpp

    chat = ChatLlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, max_tokens=32, **COMMON)
    chat.invoke("Hi", max_tokens=1)  # load
    system = ("system", "You are a meticulous assistant. " + "Answer carefully and cite the rules you follow. " * 60)
    turn1 = [system, ("human", "Name a fruit.")]
    cold, reply = first_token_seconds(chat, turn1)
    turn2 = [*turn1, ("ai", reply), ("human", "Name another one.")]
    warm, reply2 = first_token_seconds(chat, turn2)
    other = [("system", "You are a poet. " * 100), ("human", "Write one line about rain.")]
    first_token_seconds(chat, other)
    turn3 = [*turn2, ("ai", reply2), ("human", "And a third one?")]
    after_other, _ = first_token_seconds(chat, turn3)
    emit(cold=cold, warm=warm, after_other=after_other)


def long(model: str, threads: int) -> None:
    m = llm(model, threads, n_ctx=2048)
    stamps = [time.perf_counter() for piece in m.stream(STORY, max_tokens=1100) if piece]
    if len(stamps) < 1051:
        emit(error=f"stopped after {len(stamps)} pieces")
        return

    def rate(a: int, b: int) -> float:
        return (b - a) / (stamps[b] - stamps[a])

    emit(early=rate(100, 200), late=rate(950, 1050))


SECTIONS = {"decode": decode, "prompt": prompt, "batch": batch, "cache": cache, "long": long}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    args = parser.parse_args()
    SECTIONS[args.section](args.model, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
