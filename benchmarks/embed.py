"""The embed section: `embed_documents` against `llama-embedding` on the same passages, vectors compared."""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time

from benchmarks.common import Community, CommunityError, interleave
from benchmarks.community import COMPARED_VECTORS, passages  # shared by both sides
from langchain_llamacpp import LlamaCppEmbeddings
from tests.llama_tools import llama_tool
from tests.models import get

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
