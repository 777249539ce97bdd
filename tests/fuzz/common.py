"""What every part of the fuzz harness shares: paths, the case type, limits, seeds, and one token mutation."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "vendor" / "llama.cpp"
FAILURES = ROOT / "build" / "fuzz-failures"

Case = dict[str, Any]

# Under ./dev asan: code runs 2-3x slower, and ASan's shadow memory needs an unlimited address space.
ASAN = "ASAN_OPTIONS" in os.environ
# A case taking longer than this counts as a hang: hostile input must fail within seconds. A template case
# gets twice as long: ChatLlamaCpp gives a template 10 s of trial renders when it loads it, then 10 s a render.
CASE_TIMEOUT_S = float(os.environ.get("FUZZ_CASE_TIMEOUT", "45" if ASAN else "15"))
# The worker's address space: a memory bomb gets bad_alloc instead of the machine's memory...
MEMORY_MB = int(os.environ.get("FUZZ_MEMORY_MB", "2048"))
# ...and fails its case anyway if it made the worker's peak memory grow by this much.
MEMORY_BOMB_MB = int(os.environ.get("FUZZ_MEMORY_BOMB_MB", "512"))


def seed_for(name: str) -> int:
    """The seed of one test: FUZZ_SEED (default 0) mixed with the test's name, so each test has its own stream."""
    base = int(os.environ.get("FUZZ_SEED", "0"))
    return (base * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % 2**32


def iterations(default: int) -> int:
    return int(os.environ.get("FUZZ_ITERATIONS", default))


def fuzz_seconds() -> float | None:
    value = os.environ.get("FUZZ_SECONDS")
    return float(value) if value else None


def _token_mutation(rng: random.Random, tokens: list[str], pool: list[str]) -> tuple[list[str], str]:
    tokens = list(tokens)
    op = rng.choice(["delete", "duplicate", "swap", "insert", "insert", "replace", "cut"])
    if not tokens:
        return [rng.choice(pool)], "from one snippet"
    i = rng.randrange(len(tokens))
    if op == "delete":
        n = rng.choice([1, 1, 2, 5, 20])
        del tokens[i : i + n]
        return tokens, f"delete {n} tokens at {i}"
    if op == "duplicate":
        n = rng.choice([1, 3, 10, 50])
        tokens[i:i] = tokens[i : i + n] * rng.choice([1, 2, 10])
        return tokens, f"duplicate tokens {i}..{i + n}"
    if op == "swap":
        j = rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
        return tokens, f"swap tokens {i} and {j}"
    if op == "replace":
        tokens[i] = rng.choice(pool)
        return tokens, f"replace token {i} with {tokens[i]!r}"
    if op == "cut":
        return tokens[:i], f"cut after {i} tokens"
    snippet = rng.choice(pool)
    tokens.insert(i, snippet)
    return tokens, f"insert {snippet!r} at token {i}"
