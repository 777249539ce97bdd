"""Speed of langchain-llamacpp as ratios against references measured in the same run.

    ./dev bench                 # everything
    ./dev bench --only decode   # one section: decode, prompt, batch, cache, disk, long, gaps, invariant, embed,
                                # stall, kvcache, ...

References: llama.cpp's own `llama-bench`, `llama-batched-bench` and `llama-embedding`, built from the vendored
tree into the same build folder (same compiler flags, same ggml), and, for `batch` and `cache`, the same package
used the naive way (one call after another, a cold prompt). Figures, not asserts: tests assert behaviour only.
Results are printed and written to benchmarks/RESULTS.md with the machine's description.

Where langchain_community + llama-cpp-python are installed (`./dev community` puts them in .venv-community,
built from the same llama.cpp source), every section also measures them (benchmarks/community.py, one
process per section) against the same reference, side by side.

This file holds the command line and the sections in their order; the rest by job: common.py (rounds
interleaved with a reference, llama.cpp's tools, the community side), engine.py (decode, prompt, batch,
cache, long, gaps, invariant), prompt_cache.py (disk: the prompt cache on disk, across processes), embed.py
(embed), serving.py (defaults, speculative), stall.py (stall), agents.py (agents: multi-step agent tasks, scored
on the answer, not timed), kv_cache.py (kvcache: quantized KV cache memory, speed and perplexity against f16 and
llama-perplexity; Gemma 3's sliding-window slots), server.py (server: the OpenAI-compatible server against
llama-server -np 8, HTTP latency, tool calls through it; `python -m benchmarks.server --smoke` checks it runs);
decode_shielded.py (its own command: invoke() vs llama-bench
under SCHED_FIFO, for a loaded machine).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import embed  # noqa: E402
from benchmarks.agents import section_agents  # noqa: E402
from benchmarks.common import Community  # noqa: E402
from benchmarks.engine import (  # noqa: E402
    section_batch,
    section_cache,
    section_decode,
    section_gaps,
    section_invariant,
    section_long,
    section_prompt,
)
from benchmarks.kv_cache import section_kv_cache  # noqa: E402
from benchmarks.prompt_cache import section_prompt_cache  # noqa: E402
from benchmarks.server import section_server  # noqa: E402
from benchmarks.serving import section_defaults, section_speculative  # noqa: E402
from benchmarks.stall import section_stall  # noqa: E402
from langchain_llamacpp import native  # noqa: E402

SECTIONS = {
    "decode": section_decode,
    "prompt": section_prompt,
    "batch": section_batch,
    "cache": section_cache,
    "disk": section_prompt_cache,
    "long": section_long,
    "gaps": section_gaps,
    "invariant": section_invariant,
    "embed": embed.section_embed,
    "defaults": section_defaults,
    "speculative": section_speculative,
    "stall": section_stall,
    "agents": section_agents,
    "kvcache": section_kv_cache,
    "server": section_server,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--community-python", help="interpreter with langchain_community and llama_cpp")
    parser.add_argument(
        "--embed-passages", type=int, default=embed.EMBED_PASSAGES, help="passages the embed section embeds"
    )
    args = parser.parse_args()
    embed.EMBED_PASSAGES = args.embed_passages
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
