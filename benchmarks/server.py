"""The OpenAI-compatible server (`langchain-llamacpp serve`) against llama.cpp's `llama-server -np 8`, and
against the same calls in-process.

- throughput: 8 concurrent chat requests of 64 tokens each (end of generation ignored), the same async
  `openai` client against both servers, each in a process of its own with the same model, threads and total
  KV cells; the ratio per round (`interleave`). Ours twice: with its default KV pool shared by the slots,
  and with a cache per slot as llama-server -np lays it out (each slot's attention then reads its own cells).
- ttft: the median time to the first streamed token of 8 concurrent streams, both servers.
- latency: `invoke` of a short reply (8 tokens) in-process vs `ChatOpenAI` through our server: the time the
  HTTP layer adds per request.
- tools: 10 tool-calling requests with `tool_choice="auto"`: the calls `ChatLlamaCpp` makes in-process and the
  ones through our server (ChatOpenAI), which must be the same; llama-server --jinja's beside them.

    python -m benchmarks.server [--model smollm2] [--threads 2] [--rounds 3] [--only throughput latency tools]
        [--smoke]  (1 round, 8 tokens, 2 tool requests: that it runs, not figures)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from benchmarks.common import free_port, interleave, llama_server, running
from langchain_llamacpp import ChatLlamaCpp
from tests import models
from tests.texts import WEATHER_TOOL as WEATHER

SLOTS = 8
TOKENS = 64
N_CTX = SLOTS * 512  # total KV cells, both servers
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]

POPULATION = {
    "type": "function",
    "function": {
        "name": "get_population",
        "description": "The population of a country.",
        "parameters": {"type": "object", "properties": {"country": {"type": "string"}}, "required": ["country"]},
    },
}
TOOL_PROMPTS = [
    "What is the weather in Paris?",
    "How many people live in Japan?",
    "Is it raining in Oslo right now?",
    "What's the population of Brazil?",
    "Tell me a joke about cats.",
    "Weather in Cairo, please.",
    "How populous is Canada?",
    "What is 2 + 2?",
    "Should I take an umbrella in London today?",
    "Which is bigger, the population of France or of Germany?",
]


@contextlib.contextmanager
def ours(path: str, threads: int, per_slot: bool = False) -> Iterator[str]:
    """Our server: by default its slots share one KV pool of N_CTX cells (a request may use all of them);
    `per_slot`: a cache of N_CTX / SLOTS cells per slot, the layout llama-server -np has (kv_unified off)."""
    port = free_port()
    args = [sys.executable, "-m", "langchain_llamacpp.server", "--port", str(port)]
    args += ["--n-seq", str(SLOTS), "--n-threads", str(threads)]
    with tempfile.TemporaryDirectory() as folder:  # the config file lives as long as the server
        if per_slot:
            model = {"model_path": path, "n_ctx": N_CTX // SLOTS, "model_kwargs": {"kv_unified": 0}}
            config = Path(folder) / "per_slot.json"
            config.write_text(json.dumps({"models": {"local": model}}))
            args += ["--config", str(config)]
        else:
            args += ["--model", f"local={path}", "--n-ctx", str(N_CTX)]
        with running(args, port) as url:
            yield url


def theirs(path: str, threads: int) -> contextlib.AbstractContextManager[str]:
    return llama_server(path, threads, N_CTX, SLOTS)


# -- throughput and time to first token ------------------------------------------------------------------


async def _streams(url: str, tokens_each: int) -> tuple[float, float]:
    """(tokens per second over SLOTS concurrent streams, their median time to first token in ms)."""
    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)
    started = time.perf_counter()

    async def one() -> tuple[int, float]:
        first = 0.0
        tokens = 0
        stream = await client.chat.completions.create(
            model="local",
            messages=PROMPT,  # type: ignore[arg-type]
            max_tokens=tokens_each,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and not first:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return tokens, first

    results = await asyncio.gather(*(one() for _ in range(SLOTS)))
    elapsed = time.perf_counter() - started
    await client.close()
    return sum(t for t, _ in results) / elapsed, statistics.median(f for _, f in results) * 1000


def throughput(path: str, threads: int, rounds: int, tokens_each: int = TOKENS) -> list[str]:
    with ours(path, threads) as mine, ours(path, threads, per_slot=True) as split, theirs(path, threads) as ref:
        for url in (mine, split, ref):
            asyncio.run(_streams(url, tokens_each))  # warm-up: caches, first-call costs
        ttft: dict[str, list[float]] = {"ours": [], "llama-server": []}

        def measure(url: str, side: str | None) -> float:
            rate, first = asyncio.run(_streams(url, tokens_each))
            if side is not None:
                ttft[side].append(first)
            return rate

        reference, series = interleave(
            rounds,
            lambda: measure(ref, "llama-server"),
            ours=lambda: measure(mine, "ours"),
            per_slot=lambda: measure(split, None),
        )
    ratio, per_slot = series["ours"], series["per_slot"]
    return [
        f"| {SLOTS} concurrent streams x {tokens_each} tokens, tokens/s | {ratio.value()} | {reference:.1f} | "
        f"{ratio.ratio()} |",
        f"| the same, a KV cache per slot ({N_CTX // SLOTS} cells each, llama-server's layout), tokens/s | "
        f"{per_slot.value()} | {reference:.1f} | {per_slot.ratio()} |",
        f"| median time to first token, ms | {statistics.median(ttft['ours']):.0f} | "
        f"{statistics.median(ttft['llama-server']):.0f} | "
        f"{statistics.median(ttft['ours']) / statistics.median(ttft['llama-server']):.2f} |",
    ]


# -- added latency ---------------------------------------------------------------------------------------


def latency(path: str, threads: int, rounds: int) -> list[str]:
    local = ChatLlamaCpp(model_path=path, n_threads=threads, temperature=0, max_tokens=8, n_ctx=N_CTX, n_seq=SLOTS)
    local.invoke("Hi")  # load and warm up
    with ours(path, threads) as url:
        remote = ChatOpenAI(base_url=url, api_key=SecretStr("none"), model="local", temperature=0, max_tokens=8)
        remote.invoke("Hi")
        times: dict[str, list[float]] = {"local": [], "remote": []}
        for _ in range(rounds * 5):
            for side, model in (("local", local), ("remote", remote)):
                started = time.perf_counter()
                model.invoke("Say hello.")
                times[side].append((time.perf_counter() - started) * 1000)
    mine, theirs = statistics.median(times["remote"]), statistics.median(times["local"])
    return [f"| `invoke`, 8 tokens: through the server ms / in-process ms | {mine:.0f} | {theirs:.0f} (in-process) | "
            f"{mine / theirs:.2f} (+{mine - theirs:.0f} ms) |"]  # fmt: skip


# -- tool calls ------------------------------------------------------------------------------------------


def _calls(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c["name"], c["args"]) for c in message.tool_calls]


def tools(path: str, threads: int, prompts: list[str]) -> list[str]:
    fields = {"model_path": path, "n_threads": threads, "temperature": 0, "max_tokens": 96, "n_ctx": N_CTX}
    local_model = ChatLlamaCpp(**fields, n_seq=SLOTS)
    local = local_model.bind_tools([WEATHER, POPULATION], tool_choice="auto")
    got: dict[str, list[list[tuple[str, dict[str, Any]]]]] = {"local": [], "ours": [], "llama-server": []}
    for prompt in prompts:
        local_model.load().clear_cache()  # each from an empty cache, as the servers' first requests are not
        got["local"].append(_calls(local.invoke(prompt)))
    local_model.close()
    for side, server in (("ours", ours), ("llama-server", theirs)):
        with server(path, threads) as url:
            chat = ChatOpenAI(base_url=url, api_key=SecretStr("none"), model="local", temperature=0, max_tokens=96)
            bound = chat.bind_tools([WEATHER, POPULATION], tool_choice="auto")
            for prompt in prompts:
                got[side].append(_calls(bound.invoke(prompt)))
    for i, prompt in enumerate(prompts):
        print(f"  {prompt!r}: " + json.dumps({side: calls[i] for side, calls in got.items()}), flush=True)
    same = sum(a == b for a, b in zip(got["local"], got["ours"], strict=True))
    called = {side: sum(bool(c) for c in calls) for side, calls in got.items()}
    return [
        f"| tool calls, {len(prompts)} requests, tool_choice=auto: same calls as in-process | {same}/"
        f"{len(prompts)} | | |",
        f"| requests answered with a tool call: in-process / ours / llama-server --jinja | {called['local']} / "
        f"{called['ours']} / {called['llama-server']} | | |",
    ]


def table(
    path: str, tool_path: str, threads: int, parts: list[str], rounds: int, tokens_each: int, prompts: list[str]
) -> list[str]:
    lines = ["| measure | ours | reference | ratio |", "|---|---|---|---|"]
    if "throughput" in parts:
        lines += throughput(path, threads, rounds, tokens_each)
    if "latency" in parts:
        lines += latency(path, threads, rounds)
    if "tools" in parts:
        lines += tools(tool_path, threads, prompts)
    return lines


def section_server(threads: int, lines: list[str]) -> None:
    """The section for benchmarks/run.py (`./dev bench --only server`)."""
    path, tool_path = str(models.get("smollm2")), str(models.get("qwen"))
    lines.append("\n## The OpenAI-compatible server against llama-server (benchmarks/server.py)\n")
    lines.extend(table(path, tool_path, threads, ["throughput", "latency", "tools"], 3, TOKENS, TOOL_PROMPTS))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2", choices=sorted(models.MODELS))
    parser.add_argument("--tool-model", default="qwen", choices=sorted(models.MODELS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", nargs="+", default=["throughput", "latency", "tools"])
    parser.add_argument(
        "--smoke", action="store_true", help="a check that every part runs: 1 round, 8 tokens, 2 tool requests"
    )
    args = parser.parse_args()
    rounds, tokens_each, prompts = (1, 8, TOOL_PROMPTS[:2]) if args.smoke else (args.rounds, TOKENS, TOOL_PROMPTS)
    path, tool_path = str(models.get(args.model)), str(models.get(args.tool_model))
    print("\n".join(table(path, tool_path, args.threads, args.only, rounds, tokens_each, prompts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
