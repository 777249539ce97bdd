"""The same measurements as run.py, taken on langchain_community + llama-cpp-python.

Run by run.py with the interpreter that has those packages (`./dev community` builds one in
.venv-community from the same llama.cpp source distribution we vendor), one measurement per process so
that a crash (llama-cpp-python is not thread-safe under `batch()`) is reported, not fatal. Prints one JSON
object per line as figures become known; run.py reads them.

    python benchmarks/community.py SECTION --model PATH --threads N [--passages N]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

STORY = "Once upon a time, in a small village by the sea, there lived an old fisherman who"

# Vectors compared between the embedding implementations (the first ones of the run).
COMPARED_VECTORS = 4

_SUBJECTS = [
    "the river",
    "a small village",
    "the old library",
    "our team",
    "the committee",
    "a young engineer",
    "the city council",
    "the museum",
    "a local farmer",
    "the research group",
    "the orchestra",
    "a ship captain",
    "the bakery",
    "the hospital",
    "a retired teacher",
    "the weather service",
    "the football club",
    "a travelling merchant",
    "the mountain railway",
    "the school",
    "a marine biologist",
    "the newspaper",
    "the software company",
    "the garden",
]
_VERBS = [
    "announced",
    "described",
    "rebuilt",
    "studied",
    "celebrated",
    "measured",
    "questioned",
    "repaired",
    "painted",
    "documented",
    "funded",
    "opened",
    "closed",
    "moved",
    "protected",
    "explained",
    "recorded",
    "planned",
    "tested",
    "shared",
]
_OBJECTS = [
    "a new bridge",
    "the annual harvest",
    "its oldest map",
    "a quiet courtyard",
    "the winter schedule",
    "several rare birds",
    "a long report",
    "the northern coast",
    "an unusual recipe",
    "the budget for next year",
    "a collection of letters",
    "the broken clock tower",
    "a network of trails",
    "the history of the harbour",
    "a cheaper vaccine",
    "the results of the survey",
    "a festival of lights",
    "the water supply",
    "an electric bus",
    "the first snowfall",
]
_TAILS = [
    "after a long debate",
    "during the summer",
    "with help from volunteers",
    "despite the heavy rain",
    "for the first time in decades",
    "before the elections",
    "in less than a week",
    "at a surprisingly low cost",
    "to the delight of visitors",
    "while the roads were closed",
    "according to a local report",
    "using old photographs",
    "in the early morning",
    "as part of a larger plan",
    "without much publicity",
    "near the central square",
]
_LINKS = ("Later,", "Meanwhile,", "In addition,", "However,", "As a result,", "Some years ago,", "Even so,")


def passages(n: int, seed: int = 9) -> list[str]:
    """`n` different English passages of about 100 tokens each (nomic-embed's tokenizer: 100 on average, 92-112
    with [CLS] and [SEP]), the same on every run and in both interpreters; no newlines (llama-embedding reads
    one passage per line)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        sentences: list[str] = []
        words = 0
        while words < 83:
            sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
            if sentences and rng.random() < 0.4:
                sentence = f"{rng.choice(_LINKS)} {sentence}"
            sentences.append(sentence[0].upper() + sentence[1:])
            words += len(sentence.split())
        out.append(" ".join(sentences))
    return out


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


def embed(model: str, threads: int, n_passages: int, n_batch: int) -> None:
    from langchain_community.embeddings import LlamaCppEmbeddings

    # n_batch 2048: the whole trained context in one batch, as ours (n_batch = n_ctx) and llama-embedding
    # (-b 2048) use. llama-cpp-python keeps its physical batch at 512 (the class has no n_ubatch), which an
    # encoder cannot split: run.py falls back to n_batch 512 if 2048 fails.
    embeddings = LlamaCppEmbeddings(model_path=model, n_ctx=2048, n_batch=n_batch, n_threads=threads, verbose=False)
    texts = passages(n_passages)
    embeddings.embed_documents(texts[:1])  # warm-up (the model is loaded by the constructor)
    t0 = time.perf_counter()
    vectors = embeddings.embed_documents(texts)
    emit(embed=len(texts) / (time.perf_counter() - t0), vectors=vectors[:COMPARED_VECTORS])


SECTIONS = {"decode": decode, "prompt": prompt, "batch": batch, "cache": cache, "long": long, "embed": embed}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("section", choices=sorted(SECTIONS))
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--passages", type=int, default=512, help="embed: how many passages")
    parser.add_argument("--n-batch", type=int, default=2048, help="embed: LlamaCppEmbeddings(n_batch=...)")
    args = parser.parse_args()
    if args.section == "embed":
        embed(args.model, args.threads, args.passages, args.n_batch)
    else:
        SECTIONS[args.section](args.model, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
