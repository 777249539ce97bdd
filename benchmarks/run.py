"""Speed of langchain-llamacpp as ratios against references measured in the same run.

    ./dev bench                 # everything
    ./dev bench --only decode   # one section: decode, prompt, batch, cache, long, gaps, invariant, embed

References: llama.cpp's own `llama-bench`, `llama-batched-bench` and `llama-embedding`, built from the vendored
tree into the same build folder (same compiler flags, same ggml), and, for `batch` and `cache`, the same package
used the naive way (one call after another, a cold prompt). Figures, not asserts: tests assert behaviour only.
Results are printed and written to benchmarks/RESULTS.md with the machine's description.

Where langchain_community + llama-cpp-python are installed (`./dev community` puts them in .venv-community,
built from the same llama.cpp source), every section also measures them (benchmarks/community.py, one
process per section) against the same reference, side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.community import (  # noqa: E402  (shared by both sides)
    COMPARED_VECTORS,
    STORY,
    first_token_seconds,
    passages,
    stream_rate,
)
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings, native  # noqa: E402
from tests.llama_tools import llama_tool  # noqa: E402
from tests.models import get  # noqa: E402


class Community:
    """langchain_community + llama-cpp-python, measured by benchmarks/community.py in another interpreter."""

    python: str | None = None
    threads = 1

    @classmethod
    def find(cls, explicit: str | None, threads: int) -> None:
        cls.threads = threads
        probe = "import langchain_community, llama_cpp; print(llama_cpp.__version__)"
        for python in [explicit] if explicit else [sys.executable, str(ROOT / ".venv-community" / "bin" / "python")]:
            if python and Path(python).exists():
                found = subprocess.run([python, "-c", probe], capture_output=True, text=True)
                if found.returncode == 0:
                    cls.python = python
                    print(f"langchain_community with llama-cpp-python {found.stdout.strip()}: {python}", flush=True)
                    return
        if explicit:
            raise SystemExit(f"{explicit} cannot import langchain_community and llama_cpp")
        print("langchain_community + llama-cpp-python not found (./dev community installs them); skipping them")

    @classmethod
    def measure(cls, section: str, model: str, *options: str) -> dict[str, Any] | None:
        """The section's figures; {"error": ...} if it failed or crashed; None if not installed."""
        if cls.python is None:
            return None
        script = str(ROOT / "benchmarks" / "community.py")
        args = [cls.python, script, section, "--model", model, "--threads", str(cls.threads), *options]
        done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        figures: dict[str, Any] = {}
        for line in done.stdout.splitlines():
            if line.startswith("{"):
                figures.update(json.loads(line))
        if done.returncode != 0:
            how = f"killed by signal {-done.returncode}" if done.returncode < 0 else f"exit {done.returncode}"
            # The assertion that aborted, where there is one, rather than the debugger's backtrace after it.
            lines = done.stderr.strip().splitlines()
            last = next((line for line in lines if "GGML_ASSERT" in line), lines[-1] if lines else "")
            figures["error"] = f"{how}{': ' + last if last else ''}"
        return figures

    @classmethod
    def one(cls, section: str, model: str, key: str) -> float | None:
        """One figure of a section; None if not installed."""
        figures = cls.measure(section, model)
        if figures is None:
            return None
        if key not in figures:
            raise CommunityError(str(figures.get("error", f"no {key} figure")))
        return float(figures[key])


class CommunityError(RuntimeError):
    pass


def cell(figures: dict[str, Any] | None, key: str, fmt: str = "{:.1f}") -> str:
    if figures is None:
        return "not installed"
    if key in figures:
        return fmt.format(figures[key])
    return str(figures.get("error", "n/a"))


def llama_bench(model: str, threads: int, pp: int, tg: int, depth: str = "0", reps: int = 1) -> dict[str, float]:
    args = ["-m", model, "-t", str(threads), "-p", str(pp), "-n", str(tg), "-d", depth, "-r", str(reps), "-o", "json"]
    out = subprocess.run([str(llama_tool("llama-bench")), *args], check=True, capture_output=True, text=True).stdout
    result = {}
    for row in json.loads(out):
        key = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        if row.get("n_depth"):
            key += f"@d{row['n_depth']}"
        result[key] = float(row["avg_ts"])
    return result


class Series:
    """One measure taken once per round, with its ratio to the reference taken just before it."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.ratios: list[float] = []
        self.best_reference = 0.0
        self.error: str | None = None

    def value(self, fmt: str = "{:.1f}") -> str:
        return self.error or fmt.format(statistics.median(self.values))

    def ratio(self, fmt: str = "{:.3f}") -> str:
        """The median ratio, and the range over rounds: the spread is the machine's noise."""
        if self.error:
            return self.error
        low, high = (fmt.format(r) for r in (min(self.ratios), max(self.ratios)))
        return f"{fmt.format(statistics.median(self.ratios))} ({low}-{high})"

    def best(self, fmt: str = "{:.3f}") -> str:
        """Best round against best round: noise on a shared machine only ever slows a run down."""
        return self.error or fmt.format(max(self.values) / self.best_reference)


def interleave(
    rounds: int, reference: Callable[[], float], **measures: Callable[[], float | None]
) -> tuple[float, dict[str, Series]]:
    """The reference's median, and each measure's median and median ratio to the reference of its round.

    The machine's speed drifts (a shared VM moves by 10% within minutes); neighbours in time see the
    same speed, so the ratio of each round's pair is steadier than a ratio of medians. A measure that
    returns None (not installed) or fails is reported once and skipped from then on.
    """
    refs: list[float] = []
    series = {name: Series() for name in measures}
    for i in range(rounds):
        values: dict[str, float] = {}
        # The reference goes first in even rounds and last in odd ones, so neither side always runs
        # right after the other's load.
        if i % 2 == 0:
            refs.append(reference())
        for name, measure in measures.items():
            one = series[name]
            if one.error is not None:
                continue
            try:
                value = measure()
            except CommunityError as e:
                one.error = str(e)
                continue
            if value is None:
                one.error = "not installed"
                continue
            values[name] = value
        if i % 2 == 1:
            refs.append(reference())
        for name, value in values.items():
            series[name].values.append(value)
            series[name].ratios.append(value / refs[-1])
    for one in series.values():
        one.best_reference = max(refs)
    return statistics.median(refs), series


def batched_bench(model: str, threads: int, npp: int, ntg: int, npl: int) -> float:
    """llama-batched-bench's generation rate (S_TG, tokens/s over all sequences)."""
    out = subprocess.run(
        [
            str(llama_tool("llama-batched-bench")),
            "-m",
            model,
            "-t",
            str(threads),
            "-c",
            str(npl * (npp + ntg) + 64),
            "-b",
            "512",
            "-ub",
            "512",
            "-npp",
            str(npp),
            "-ntg",
            str(ntg),
            "-npl",
            str(npl),
            "--output-format",
            "jsonl",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return float(rows[-1]["speed_tg"])


def section_decode(threads: int, lines: list[str]) -> None:
    lines.append("\n## Decode through `stream()` vs `llama-bench` tg128\n")
    lines.append(
        "| model | llama-bench tg128 tok/s | stream() tok/s | ratio (range over rounds) | best vs best "
        "| community stream() tok/s | community ratio | community best vs best |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for name in ("gemma3", "qwen"):
        model = str(get(name))
        llm = LlamaCpp(model_path=model, n_threads=threads, temperature=0, repeat_penalty=1.0, n_ctx=512)
        llm.invoke(STORY, max_tokens=4)  # load
        reference, m = interleave(
            7,
            lambda model=model: llama_bench(model, threads, 0, 128)["tg128"],  # type: ignore[misc]
            ours=lambda llm=llm: stream_rate(llm, STORY, 128, ignore_eos=True),  # type: ignore[misc]
            community=lambda model=model: Community.one("decode", model, "decode"),  # type: ignore[misc]
        )
        ours, theirs = m["ours"], m["community"]
        lines.append(
            f"| {name} | {reference:.1f} | {ours.value()} | {ours.ratio()} | {ours.best()} "
            f"| {theirs.value()} | {theirs.ratio()} | {theirs.best()} |"
        )
        print(lines[-1], flush=True)


def prompt_rate(engine: native.Engine, n_prompt: int) -> float:
    model = engine.model
    tokens = [model.bos_token] + [(7 * i + 1000) % model.n_vocab for i in range(n_prompt - 1)]
    engine.clear_cache()
    params = native.RequestParams()
    params.prompt = tokens
    params.max_tokens = 1
    params.sampling.temperature = 0
    request = engine.submit(params)
    request.wait()
    return n_prompt / (request.usage["prompt_ms"] / 1000)


def section_prompt(threads: int, lines: list[str]) -> None:
    lines.append("\n## Prompt processing vs `llama-bench` pp512\n")
    lines.append(
        "| model | llama-bench pp512 tok/s | engine tok/s | ratio (range over rounds) | best vs best "
        "| community tok/s (invoke) | community ratio | community best vs best |"
        "\n|---|---|---|---|---|---|---|---|"
    )
    for name in ("gemma3", "qwen"):
        model = str(get(name))
        engine = LlamaCpp(model_path=model, n_threads=threads, n_ctx=1024).load()
        prompt_rate(engine, 512)  # warm-up, as llama-bench does
        reference, m = interleave(
            5,
            lambda model=model: llama_bench(model, threads, 512, 0)["pp512"],  # type: ignore[misc]
            ours=lambda engine=engine: prompt_rate(engine, 512),  # type: ignore[misc]
            community=lambda model=model: Community.one("prompt", model, "prompt"),  # type: ignore[misc]
        )
        ours, theirs = m["ours"], m["community"]
        lines.append(
            f"| {name} | {reference:.1f} | {ours.value()} | {ours.ratio()} | {ours.best()} "
            f"| {theirs.value()} | {theirs.ratio()} | {theirs.best()} |"
        )
        print(lines[-1], flush=True)


def sequential_and_batched(llm: LlamaCpp, prompts: list[str]) -> tuple[float, float]:
    """Seconds for the prompts as calls one after another, then as one batch()."""
    t0 = time.perf_counter()
    for p in prompts:
        llm.invoke(p)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.batch(prompts)
    return sequential, time.perf_counter() - t0


def section_batch(threads: int, lines: list[str]) -> None:
    lines.append("\n## `batch()` of 8 prompts (64 tokens each) on gemma3\n")
    model = str(get("gemma3"))
    prompts = [f"{STORY} (variant {i})" for i in range(8)]
    llm = LlamaCpp(
        model_path=model,
        n_threads=threads,
        temperature=0,
        repeat_penalty=1.0,
        n_seq=8,
        n_ctx=96,  # per sequence, as llama-batched-bench's -c 8*(24+64)+64 gives each of its 8 streams
        model_kwargs={"kv_unified": 0},  # a cache per sequence, as llama-batched-bench has by default
        max_tokens=64,
        ignore_eos=True,
    )
    llm.invoke(prompts[0], max_tokens=1)  # load
    sequential, batched = sequential_and_batched(llm, prompts)

    # Generation rate as llama-batched-bench counts it: tokens generated once every prompt is in.
    def concurrent_rate() -> float:
        stamps: list[list[float]] = [[] for _ in prompts]

        def consume(i: int) -> None:
            stamps[i] = [time.perf_counter() for piece in llm.stream(prompts[i]) if piece]

        threads_ = [threading.Thread(target=consume, args=(i,)) for i in range(8)]
        for t in threads_:
            t.start()
        for t in threads_:
            t.join()
        start = max(s[0] for s in stamps)
        end = max(s[-1] for s in stamps)
        return sum(1 for s in stamps for t in s if t > start) / (end - start)

    reference, rates = interleave(3, lambda: batched_bench(model, threads, 24, 64, 8), ours=concurrent_rate)
    theirs = Community.measure("batch", model)
    speedup = {"x": theirs["sequential"] / theirs["batched"]} if theirs and "batched" in theirs else theirs
    lines.append("| measure | langchain-llamacpp | community |\n|---|---|---|")
    lines.append(f"| 8 calls one after another | {sequential:.2f} s | {cell(theirs, 'sequential', '{:.2f} s')} |")
    lines.append(f"| batch() of the same 8 | {batched:.2f} s | {cell(theirs, 'batched', '{:.2f} s')} |")
    lines.append(f"| speed-up | **{sequential / batched:.2f}x** | {cell(speedup, 'x', '{:.2f}x')} |")
    lines.append(f"| generation rate, 8 concurrent streams | {rates['ours'].value()} tok/s | |")
    lines.append(f"| llama-batched-bench S_TG at 8 sequences | {reference:.1f} tok/s | |")
    lines.append(f"| ratio (range over rounds) | **{rates['ours'].ratio()}** | |")
    print("\n".join(lines[-7:]), flush=True)


def section_cache(threads: int, lines: list[str]) -> None:
    lines.append("\n## Time to first token of a follow-up chat turn (qwen, 2 slots)\n")
    model = str(get("qwen"))
    chat = ChatLlamaCpp(model_path=model, n_threads=threads, temperature=0, max_tokens=32, n_seq=2, n_ctx=4096)
    system = ("system", "You are a meticulous assistant. " + "Answer carefully and cite the rules you follow. " * 60)
    chat.load().clear_cache()
    turn1 = [system, ("human", "Name a fruit.")]
    cold, reply = first_token_seconds(chat, turn1)
    turn2 = [*turn1, ("ai", reply), ("human", "Name another one.")]
    warm, reply2 = first_token_seconds(chat, turn2)
    other = [("system", "You are a poet. " * 100), ("human", "Write one line about rain.")]
    first_token_seconds(chat, other)  # another conversation served in between
    turn3 = [*turn2, ("ai", reply2), ("human", "And a third one?")]
    after_other, _ = first_token_seconds(chat, turn3)
    theirs = Community.measure("cache", model)
    vs = {k: theirs[k] / theirs["cold"] for k in ("warm", "after_other")} if theirs and "cold" in theirs else theirs
    lines.append("| measure | seconds | vs cold | community seconds | community vs cold |\n|---|---|---|---|---|")
    lines.append(f"| cold first turn | {cold:.3f} | 1.00 | {cell(theirs, 'cold', '{:.3f}')} | 1.00 |")
    lines.append(
        f"| follow-up turn | {warm:.3f} | **{warm / cold:.3f}** "
        f"| {cell(theirs, 'warm', '{:.3f}')} | {cell(vs, 'warm', '{:.3f}')} |"
    )
    lines.append(
        f"| follow-up after another conversation | {after_other:.3f} | **{after_other / cold:.3f}** "
        f"| {cell(theirs, 'after_other', '{:.3f}')} | {cell(vs, 'after_other', '{:.3f}')} |"
    )
    print("\n".join(lines[-4:]), flush=True)


def section_long(threads: int, lines: list[str]) -> None:
    lines.append("\n## Decode rate at token 1000 vs token 100 (gemma3)\n")
    model = str(get("gemma3"))
    llm = LlamaCpp(model_path=model, n_threads=threads, temperature=0, repeat_penalty=1.0, n_ctx=2048)
    llm.invoke(STORY, max_tokens=4)  # load

    def ours() -> float:
        stamps = [time.perf_counter() for piece in llm.stream(STORY, max_tokens=1100, ignore_eos=True) if piece]
        return (100 / (stamps[1050] - stamps[950])) / (100 / (stamps[200] - stamps[100]))

    def reference() -> float:
        ref = llama_bench(model, threads, 0, 100, depth="100,950")
        return ref["tg100@d950"] / ref["tg100@d100"]

    def community() -> float | None:
        figures = Community.measure("long", model)
        if figures is not None and "late" not in figures:
            raise CommunityError(str(figures.get("error")))
        return None if figures is None else figures["late"] / figures["early"]

    # Attention over a longer context costs llama.cpp itself some speed: the figure that is ours is how
    # the decline compares with llama-bench's at the same depths.
    reference_decline, m = interleave(3, reference, ours=ours, community=community)
    lines.append("| | late / early (tokens 950-1050 vs 100-200) | vs llama-bench's own decline |\n|---|---|---|")
    lines.append(f"| llama-bench tg100 at depth 950 vs 100 | {reference_decline:.3f} | 1.000 |")
    lines.append(f"| stream() | **{m['ours'].value('{:.3f}')}** | {m['ours'].ratio()} |")
    lines.append(f"| community stream() | {m['community'].value('{:.3f}')} | {m['community'].ratio()} |")
    print("\n".join(lines[-4:]), flush=True)


def section_gaps(threads: int, lines: list[str]) -> None:
    lines.append("\n## Four requests in slots 0, 2, 4, 6 vs in slots 0-3 (8 slots, gemma3, 64 tokens each)\n")
    model = str(get("gemma3"))
    llm = LlamaCpp(
        model_path=model,
        n_threads=threads,
        temperature=0,
        n_seq=8,
        n_ctx=256,
        max_tokens=64,
        ignore_eos=True,
        model_kwargs={"kv_unified": 0},  # fillers exist only with a cache per slot (one pool needs none)
    )
    engine = llm.load()
    stories = [f"Story number {i}: once upon a time" for i in range(8)]

    def rate(slots: list[int]) -> float:
        # Each slot caches its own story; a request that extends it goes back to that slot.
        engine.clear_cache()
        for story in stories:
            llm.invoke(story, max_tokens=1)
        t0 = time.perf_counter()
        llm.batch([stories[i] + " there" for i in slots])
        return len(slots) * 64 / (time.perf_counter() - t0)

    fillers = engine.stats()["fillers"]
    _, m = interleave(3, lambda: rate([0, 1, 2, 3]), apart=lambda: rate([0, 2, 4, 6]))
    lines.append("| measure | tok/s | ratio to slots 0-3 (range over rounds) |\n|---|---|---|")
    lines.append(f"| slots 0, 2, 4, 6 | {m['apart'].value()} | {m['apart'].ratio()} |")
    lines.append(f"filler tokens: {engine.stats()['fillers'] - fillers} (without them, each pass splits in four)")
    print("\n".join(lines[-4:]), flush=True)


def section_invariant(threads: int, lines: list[str]) -> None:
    lines.append("\n## `batch_invariant=True` vs the default on gemma3 (its cost)\n")
    model = str(get("gemma3"))
    common: dict[str, Any] = {
        "model_path": model,
        "n_threads": threads,
        "temperature": 0,
        "repeat_penalty": 1.0,
        "n_ctx": 1024,  # the default's 8 slots share it: room for 8 prompts plus 64 tokens each
        "max_tokens": 64,
        "ignore_eos": True,
    }
    llms = {(inv, n): LlamaCpp(batch_invariant=inv, n_seq=n, **common) for inv in (False, True) for n in (1, 8)}
    for llm in llms.values():
        llm.invoke(STORY, max_tokens=4)  # load
    prompts = [f"{STORY} (variant {i})" for i in range(8)]

    def batch_rate(llm: LlamaCpp) -> float:
        llm.load().clear_cache()
        t0 = time.perf_counter()
        llm.batch(prompts)
        return 8 * 64 / (time.perf_counter() - t0)

    lines.append("| measure | batch_invariant tok/s | ratio to the default (range over rounds) |\n|---|---|---|")
    lines_text = " ".join(f"Line {i}: the tide rises and falls." for i in range(30))
    for label, text, rounds in (("a story", STORY, 5), ("text that repeats its prompt", lines_text, 3)):
        _, m = interleave(
            rounds,
            lambda text=text: stream_rate(llms[False, 1], text, 128, ignore_eos=True),  # type: ignore[misc]
            invariant=lambda text=text: stream_rate(llms[True, 1], text, 128, ignore_eos=True),  # type: ignore[misc]
        )
        lines.append(f"| one stream, tg128 ({label}) | {m['invariant'].value()} | {m['invariant'].ratio()} |")
    _, batch = interleave(3, lambda: batch_rate(llms[False, 8]), invariant=lambda: batch_rate(llms[True, 8]))
    lines.append(f"| batch() of 8, 64 tokens each | {batch['invariant'].value()} | {batch['invariant'].ratio()} |")
    print("\n".join(lines[-5:]), flush=True)


# Passages embedded by the embed section (issue 9: 512 of about 100 tokens); --embed-passages changes it.
EMBED_PASSAGES = 512


def log_seconds(line: str) -> float:
    """The time stamp of a llama.cpp tool's log line ("M.SS.mmm.uuu I text"): seconds since the tool started."""
    minutes, seconds, millis, micros = (int(part) for part in line.split()[0].split("."))
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def llama_embedding(model: str, threads: int, passage_file: str) -> tuple[float, list[list[float]]]:
    """llama-embedding on every line of `passage_file`: seconds of embedding work, and the vectors.

    The work is timed from the tool's first `batch_decode` log line (after loading the model, the warm-up
    decode and tokenizing; its log stamps are microseconds since the process started) to the process's
    exit (all decode steps, normalising, writing the JSON). One run gives both, so that load time, which
    varies by seconds on a busy machine, is not subtracted from another run's total; our side is timed
    around `embed_documents`, which also tokenizes, so the split does not favour us.
    """
    n_ctx = "2048"  # nomic-embed's trained context, which our class takes for n_ctx and n_batch
    args = [str(llama_tool("llama-embedding")), "-m", model, "-t", str(threads), "-f", passage_file]
    # -b = -ub: an encoder sees a whole batch in one step; no -np: the tool then takes llama.cpp's maximum of
    # sequences per batch (256) on a unified KV cache, as ours does; raw passages (no task prefix) on both sides.
    args += ["-c", n_ctx, "-b", n_ctx, "-ub", n_ctx, "--pooling", "mean", "--embd-normalize", "2"]
    args += ["--embd-output-format", "json"]
    t0 = time.perf_counter()
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    first = next(line for line in done.stderr.splitlines() if "batch_decode:" in line)
    out = json.loads(done.stdout[done.stdout.index("{") :])
    return wall - log_seconds(first), [row["embedding"] for row in out["data"]]


def max_difference(vectors: list[list[float]], reference: list[list[float]], normalize: bool = False) -> float:
    """The largest difference of one component between `vectors` and the reference's first ones."""

    def unit(v: list[float]) -> list[float]:
        norm = sum(x * x for x in v) ** 0.5 if normalize else 1.0
        return [x / norm for x in v]

    return max(abs(a - b) for v, r in zip(vectors, reference, strict=False) for a, b in zip(unit(v), r, strict=True))


def section_embed(threads: int, lines: list[str]) -> None:
    n = EMBED_PASSAGES
    heading = f"\n## Embeddings: passages/s vs `llama-embedding` (nomic-embed-text-v1.5 F16, {n} passages)\n"
    lines.append(heading)
    model = str(get("nomic"))
    texts = passages(n)
    # No task prefix on our side either (nomic's default for documents is "search_document: "): the same text.
    embeddings = LlamaCppEmbeddings(model_path=model, n_threads=threads, document_instruction="")
    tokenizer = embeddings.load().model
    mean_tokens = statistics.mean(len(tokenizer.tokenize(t, add_special=True, parse_special=False)) for t in texts)
    embeddings.embed_documents(texts[:1])  # load and warm up
    found: dict[str, list[list[float]]] = {}

    def reference() -> float:
        seconds, found["reference"] = llama_embedding(model, threads, passage_file.name)
        return n / seconds

    def ours() -> float:
        t0 = time.perf_counter()
        vectors = embeddings.embed_documents(texts)
        rate = n / (time.perf_counter() - t0)
        found["ours"] = vectors[:COMPARED_VECTORS]
        return rate

    # langchain_community's class at n_batch 2048 first, on enough passages to fill a batch past 512 tokens;
    # if that fails, the rounds measure it at n_batch 512, the largest its fixed physical batch can take.
    community_batch = "2048"
    probe = Community.measure("embed", model, "--passages", "24", "--n-batch", community_batch)
    if probe is not None and "embed" not in probe:
        community_batch = "512"
        print(f"community n_batch=2048: {probe.get('error')}; measuring n_batch=512", flush=True)

    def community() -> float | None:
        figures = Community.measure("embed", model, "--passages", str(n), "--n-batch", community_batch)
        if figures is None:
            return None
        if "embed" not in figures:
            raise CommunityError(str(figures.get("error", "no embed figure")))
        found["community"] = figures["vectors"]
        return float(figures["embed"])

    with tempfile.NamedTemporaryFile("w", suffix=".txt") as passage_file:
        passage_file.write("\n".join(texts) + "\n")
        passage_file.flush()
        reference_rate, m = interleave(3, reference, ours=ours, community=community)
    ref_vectors = found["reference"][:COMPARED_VECTORS]
    # llama-cpp-python's embed() does not normalise (langchain_community asks for no normalisation): its
    # vectors are compared after scaling them to length 1 as both others are.
    ours_diff = f"{max_difference(found['ours'], ref_vectors):.1e}"
    theirs_diff = f"{max_difference(found['community'], ref_vectors, True):.1e}" if "community" in found else "n/a"
    lines.append(
        f"Passages: {n} different English paragraphs, {mean_tokens:.1f} tokens on average with [CLS] and [SEP], "
        f"no task prefix; load time excluded on every side; vector difference: the largest of one component "
        f"over the first {COMPARED_VECTORS} vectors against llama-embedding's.\n"
    )
    lines.append(
        "| | passages/s | ratio to llama-embedding (range over rounds) | best vs best | max vector difference |"
        "\n|---|---|---|---|---|"
    )
    lines.append(f"| llama-embedding | {reference_rate:.2f} | 1.000 | 1.000 | (reference) |")
    ours_s, theirs = m["ours"], m["community"]
    lines.append(
        f"| `embed_documents` | {ours_s.value('{:.2f}')} | **{ours_s.ratio()}** | {ours_s.best()} | {ours_diff} |"
    )
    lines.append(
        f"| community `embed_documents` (n_batch={community_batch}) | {theirs.value('{:.2f}')} | {theirs.ratio()} "
        f"| {theirs.best()} | {theirs_diff} |"
    )
    if community_batch != "2048" and probe is not None:
        lines.append(f"| community `embed_documents` (n_batch=2048) | {probe.get('error')} | | | |")
    print("\n".join(lines[lines.index(heading) :]), flush=True)


def section_defaults(threads: int, lines: list[str]) -> None:
    """What the default constructor gives, against the old default (one slot, KV cache per slot)."""
    lines.append("\n## Defaults that serve many: `LlamaCpp(model_path=..., n_ctx=4096)` as constructed\n")
    lines.append(
        "New default: 8 slots sharing one KV pool of n_ctx cells (llama.cpp's unified KV cache). Old: one slot. "
        "gemma3, 8 prompts of 64 tokens each; chat on qwen.\n"
    )
    model = str(get("gemma3"))
    old = {"n_seq": 1, "model_kwargs": {"kv_unified": 0}}
    prompts = [f"{STORY} (variant {i})" for i in range(8)]

    def batch_figures(**settings: Any) -> tuple[float, float, int]:
        llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0,
                       max_tokens=64, ignore_eos=True, **settings)  # fmt: skip
        llm.invoke(prompts[0], max_tokens=1)  # load
        return *sequential_and_batched(llm, prompts), llm.load().n_ctx_total

    seq_new, bat_new, cells_new = batch_figures()
    seq_old, bat_old, cells_old = batch_figures(**old)
    lines.append("| measure | default | old default (n_seq=1) | new vs old |\n|---|---|---|---|")
    lines.append(f"| 8 calls one after another | {seq_new:.2f} s | {seq_old:.2f} s | {seq_new / seq_old:.2f} |")
    lines.append(f"| batch() of the same 8 | {bat_new:.2f} s | {bat_old:.2f} s | {bat_new / bat_old:.2f} |")
    lines.append(f"| batch() speed-up | **{seq_new / bat_new:.2f}x** | {seq_old / bat_old:.2f}x | |")
    lines.append(
        f"| KV cells of the full-attention layers | {cells_new} | {cells_old} | **{cells_new / cells_old:.2f}** |"
    )
    # gemma3's sliding-window layers keep a window per slot that may run at once (llama.cpp's log): 4096
    # cells (60 MiB) with 8 slots against 1024 (15 MiB) with one; the whole cache 72 MiB against 27.

    # One stream alone, against llama-bench in the same run.
    new_llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0)
    old_llm = LlamaCpp(model_path=model, n_threads=threads, n_ctx=4096, temperature=0, repeat_penalty=1.0, **old)
    for llm in (new_llm, old_llm):
        llm.invoke(STORY, max_tokens=4)

    def fresh(llm: LlamaCpp) -> float:
        llm.load().clear_cache()  # no other conversation cached in the pool
        return stream_rate(llm, STORY, 128, ignore_eos=True)

    def beside_idle(llm: LlamaCpp) -> float:
        # The 8 batch() prompts above, cached: the stream's attention passes over their cells too (masked).
        llm.load().clear_cache()
        llm.batch(prompts, max_tokens=16)
        return stream_rate(llm, STORY, 128, ignore_eos=True)

    reference, m = interleave(
        7,
        lambda: llama_bench(model, threads, 0, 128)["tg128"],
        new=lambda: fresh(new_llm),
        old=lambda: fresh(old_llm),
        idle=lambda: beside_idle(new_llm),
    )
    lines.append(
        f"| one stream, stream() vs llama-bench tg128 ({reference:.1f} tok/s) | {m['new'].value()} tok/s, "
        f"**{m['new'].ratio()}** | {m['old'].value()} tok/s, {m['old'].ratio()} | |"
    )
    lines.append(
        f"| the same stream beside 8 idle cached conversations | {m['idle'].value()} tok/s, {m['idle'].ratio()} "
        "| (one slot holds one) | |"
    )

    # Two conversations served alternately: each follow-up finds its prefix.
    chat = ChatLlamaCpp(model_path=str(get("qwen")), n_threads=threads, temperature=0, max_tokens=16, n_ctx=4096)
    chat.load().clear_cache()
    rules = "Answer carefully and cite the rules you follow. " * 60
    a1 = [("system", "You are a meticulous assistant. " + rules), ("human", "Name a fruit.")]
    b1 = [("system", "You are a patient poet. " + rules), ("human", "Name a river.")]
    cold_a, reply_a = first_token_seconds(chat, a1)
    cold_b, reply_b = first_token_seconds(chat, b1)
    warm_a, _ = first_token_seconds(chat, [*a1, ("ai", reply_a), ("human", "Another one?")])
    warm_b, _ = first_token_seconds(chat, [*b1, ("ai", reply_b), ("human", "Another one?")])
    lines.append(
        f"| chat follow-up TTFT, two conversations alternating (vs cold) | A {warm_a / cold_a:.3f}, "
        f"B **{warm_b / cold_b:.3f}** | | |"
    )
    print("\n".join(lines[-8:]), flush=True)


# -- speculative decoding ------------------------------------------------------------------------

SPEC_CODE = """def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)


def variance(values):
    m = mean(values)
    total = 0
    for v in values:
        total += (v - m) ** 2
    return total / len(values)


def stdev(values):
    return variance(values) ** 0.5
"""
SPEC_CONTEXT = (
    "The Rhine rises in the Swiss Alps and flows 1,230 kilometres to the North Sea. It passes Basel, where it "
    "turns north, then Strasbourg, Mannheim, Mainz, Koblenz, Cologne and Duisburg before entering the "
    "Netherlands. Its largest tributaries are the Aare, the Main, the Neckar and the Moselle. The river carries "
    "more freight than any other inland waterway in Europe, and the stretch between Bingen and Koblenz, the "
    "Middle Rhine, is a UNESCO World Heritage Site known for its castles and vineyards."
)
SPEC_PROMPTS = {
    "code edit": "Rename the variable `total` to `acc` in this code and give the whole code back:\n"
    f"```python\n{SPEC_CODE}```",
    "RAG answer": f"Context:\n{SPEC_CONTEXT}\n\nQuoting the context, list every city the Rhine passes and its "
    "largest tributaries, then say why the Middle Rhine is known.",
    "free prose": "Write a short story about a lighthouse keeper who finds a message in a bottle.",
}
SPEC_TOKENS = 160
SPEC_K = 3  # draft length for the comparison with llama.cpp's tool (its default)


def chatml(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def speculative_simple(target: str, draft: str | None, prompt: str, threads: int, k: int) -> tuple[float, float]:
    """llama.cpp's own speculative tool (examples/speculative-simple): decode tokens/s and acceptance."""
    args = [str(llama_tool("llama-speculative-simple")), "-m", target, "-p", prompt, "-n", str(SPEC_TOKENS),
            "-t", str(threads), "-c", "2048", "--temp", "0", "--top-k", "1", "--spec-draft-n-max", str(k),
            "--spec-draft-n-min", "0"]  # fmt: skip
    if draft:
        args += ["-md", draft, "-td", str(threads), "--spec-type", "draft-simple"]
    else:
        args += ["--spec-type", "ngram-simple"]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    text = out.stdout + out.stderr
    rate = float(text.split("decoded", 1)[1].split("speed:", 1)[1].split("t/s", 1)[0])
    drafted = int(text.split("n_drafted =", 1)[1].split()[0])
    accepted = int(text.split("n_accept  =", 1)[1].split()[0])
    return rate, accepted / max(drafted, 1)


def per_token_acceptance(rate: float, k: int) -> float:
    """The a with (a + a^2 + ... + a^k) / k = rate: the chance a drafted token is right given those before it were."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        a = (lo + hi) / 2
        if sum(a**i for i in range(1, k + 1)) / k < rate:
            lo = a
        else:
            hi = a
    return (lo + hi) / 2


def decode_ms(engine: Any, rows: int, reps: int = 8) -> float:
    """Milliseconds of one decode of `rows` tokens, every row with logits, after a 150-token prefix."""
    model = engine.model
    prefix = model.tokenize(STORY, add_special=True, parse_special=False)[:150]
    engine.kv_remove(0, 0)
    engine.evaluate(0, prefix, False)
    times = []
    for i in range(reps + 1):
        tokens = [(1000 + 7 * (i + j)) % model.n_vocab for j in range(rows)]
        t0 = time.perf_counter()
        engine.evaluate(0, tokens, True)
        times.append((time.perf_counter() - t0) * 1000)
        engine.kv_remove(0, len(prefix))
    return statistics.median(times[1:])


def section_speculative(threads: int, lines: list[str]) -> None:
    target, draft = str(get("qwen15")), str(get("qwen"))
    lines.append("\n## Speculative decoding: Qwen2.5-Coder-1.5B-Instruct, drafts by the 0.5B or by prompt lookup\n")
    lines.append(
        f'Greedy, {SPEC_TOKENS} tokens at most, generation tokens/s (prompt not counted). "ours, adaptive" is the '
        'default (the cost model decides the draft length, 16 at most); "forced" drafts '
        f"{SPEC_K} tokens every step (draft_min=draft_max={SPEC_K}), as llama.cpp's `llama-speculative-simple` does "
        f"with `--spec-draft-n-max {SPEC_K}` in the same run. Without `batch_invariant` (as here, for speed) a k-row "
        "batch rounds differently from a one-row step, so where two tokens are nearly tied the text can differ "
        "between columns (noted beside the text); with it, the outputs are token for token the same "
        "(tests/integration/test_speculative.py).\n"
    )
    lines.append(
        "| text | plain tok/s | draft model, adaptive | draft model, forced k=3: tok/s, acceptance | llama.cpp "
        "speculative-simple k=3: tok/s, acceptance | forced vs llama.cpp | prompt lookup, adaptive | prompt lookup, "
        "forced k=3: tok/s, acceptance |\n|---|---|---|---|---|---|---|---|"
    )
    common: dict[str, Any] = {"n_threads": threads, "temperature": 0, "repeat_penalty": 1.0, "n_seq": 1,
                              "n_ctx": 2048, "max_tokens": SPEC_TOKENS}  # fmt: skip
    setups = {
        "plain": LlamaCpp(model_path=target, **common),
        "draft": LlamaCpp(model_path=target, draft_model_path=draft, **common),
        "draft3": LlamaCpp(model_path=target, draft_model_path=draft, draft_min=SPEC_K, draft_max=SPEC_K, **common),
        "lookup": LlamaCpp(model_path=target, prompt_lookup=True, **common),
        "lookup3": LlamaCpp(model_path=target, prompt_lookup=True, draft_min=SPEC_K, draft_max=SPEC_K, **common),
    }

    def run(llm: LlamaCpp, prompt: str) -> tuple[float, float, float, str]:
        llm.load().clear_cache()
        engine = llm.load()
        params = native.RequestParams()
        params.prompt = engine.model.tokenize(prompt, add_special=True, parse_special=True)
        params.max_tokens = SPEC_TOKENS
        params.sampling.temperature = 0
        request = engine.submit(params)
        text = "".join(c.text for c in request.wait())
        u = request.usage
        rate = (u["completion_tokens"] - 1) / (u["generation_ms"] / 1000)
        # Steps that drafted, per generated token: prompt lookup drafts only where the text repeats itself.
        rounds = u["draft_n"] / SPEC_K / max(u["completion_tokens"], 1)
        return rate, u["draft_n_accepted"] / max(u["draft_n"], 1), rounds, text

    for llm in setups.values():
        run(llm, chatml("Hi"))  # load, warm up
    measured: dict[str, dict[str, tuple[float, ...]]] = {}
    for label, text in SPEC_PROMPTS.items():
        prompt = chatml(text)
        figures: dict[str, list[tuple[float, float, float]]] = {name: [] for name in [*setups, "tool"]}
        outputs = set()
        for _ in range(3):  # rounds, interleaved: the machine's speed drifts
            for name, llm in setups.items():
                rate, acc, rounds, out = run(llm, prompt)
                figures[name].append((rate, acc, rounds))
                outputs.add(out)
            figures["tool"].append((*speculative_simple(target, draft, prompt, threads, SPEC_K), 0.0))
        med = {name: tuple(statistics.median(x[i] for x in v) for i in range(3)) for name, v in figures.items()}
        measured[label] = med
        plain = med["plain"][0]
        same = "" if len(outputs) == 1 else f" ({len(outputs)} different outputs)"
        lines.append(
            f"| {label}{same} | {plain:.1f} | {med['draft'][0]:.1f} ({med['draft'][0] / plain:.2f}x) "
            f"| {med['draft3'][0]:.1f} ({med['draft3'][0] / plain:.2f}x), {med['draft3'][1]:.2f} "
            f"| {med['tool'][0]:.1f}, {med['tool'][1]:.2f} | **{med['draft3'][0] / med['tool'][0]:.2f}** "
            f"| {med['lookup'][0]:.1f} ({med['lookup'][0] / plain:.2f}x) "
            f"| {med['lookup3'][0]:.1f} ({med['lookup3'][0] / plain:.2f}x), {med['lookup3'][1]:.2f} |"
        )
        print(lines[-1], flush=True)

    # The cost model: what a k-token verification costs here, and what it predicts.
    t_engine = setups["plain"].load()
    d_engine = LlamaCpp(model_path=draft, n_threads=threads, n_seq=1, n_ctx=2048).load()
    one = decode_ms(t_engine, 1)
    cost = {k: decode_ms(t_engine, k + 1) / one for k in (1, 2, 3, 4, 8)}
    d = decode_ms(d_engine, 1) / one
    lines.append(
        "\nCost model. Measured here: a decode of k+1 rows (each with logits) costs "
        + ", ".join(f"{c:.2f}x one row for k={k}" for k, c in cost.items())
        + f"; the draft model's token costs {d:.2f}x the target's. With a per-token acceptance a, a step that "
        "drafts k tokens yields 1 + a + ... + a^k tokens for c(k) + k*d units of time, so the speed-up over plain "
        "decoding is S = (1 + a + ... + a^k) / (c(k) + k*d) (prompt lookup: d = 0). Where only a fraction r of "
        "the steps per generated token draft (prompt lookup finds no match elsewhere), a text of N tokens "
        "takes r*N*(c(k) + k*d) + N - r*N*(1 + a + ... + a^k) units.\n"
    )
    lines.append(
        "| text | source | acceptance (per token a) | predicted S, this machine | measured S, this machine "
        "| predicted S where k+1 rows cost one (memory-bound: GPU, Apple silicon) |\n|---|---|---|---|---|---|"
    )
    for label, med in measured.items():
        for name, source, dd in (("draft3", "draft model", d), ("lookup3", "prompt lookup", 0.0)):
            rate, rounds = med[name][1], med[name][2]
            a = per_token_acceptance(rate, SPEC_K)
            gain = 1 + sum(a**i for i in range(1, SPEC_K + 1))
            rounds = min(rounds, 1 / gain)  # drafting steps cannot yield more tokens than the text has

            def speedup(step_cost: float, rounds: float = rounds, gain: float = gain) -> float:
                return 1 / (rounds * step_cost + 1 - rounds * gain)

            predicted = speedup(cost[SPEC_K] + SPEC_K * dd)
            elsewhere = speedup(1.0 + SPEC_K * dd)
            lines.append(
                f"| {label} | {source} | {rate:.2f} ({a:.2f}) | {predicted:.2f} | {med[name][0] / med['plain'][0]:.2f} "
                f"| {elsewhere:.2f} |"
            )
    print("\n".join(lines[-8:]), flush=True)


SECTIONS = {
    "decode": section_decode,
    "prompt": section_prompt,
    "batch": section_batch,
    "cache": section_cache,
    "long": section_long,
    "gaps": section_gaps,
    "invariant": section_invariant,
    "embed": section_embed,
    "defaults": section_defaults,
    "speculative": section_speculative,
}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    pinned = ROOT / "vendor" / "llama.cpp" / "PINNED"  # the source has no git metadata, so not in the build info
    source = pinned.read_text().split()[-1] if pinned.exists() else native.LLAMA_CPP_BUILD
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {source}"


def main() -> int:
    global EMBED_PASSAGES
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--community-python", help="interpreter with langchain_community and llama_cpp")
    parser.add_argument("--embed-passages", type=int, default=EMBED_PASSAGES, help="passages the embed section embeds")
    args = parser.parse_args()
    EMBED_PASSAGES = args.embed_passages
    Community.find(args.community_python, args.threads)
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {machine()}; {args.threads} threads; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "Produced by `./dev bench`; every ratio compares two figures measured in this same run. Ratios are medians",
        "of per-round ratios (reference and measure taken back to back); the range beside them is the spread over",
        "rounds, which on a shared VM is mostly the machine's own noise; \"best vs best\" compares each side's",
        "fastest round (noise only ever slows a run down).",
    ]
    for name in args.only or list(SECTIONS):
        SECTIONS[name](args.threads, lines)
    if not args.only:
        Path(args.out).write_text("\n".join(lines) + "\n")
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
