"""llama.cpp's own tools, built from the vendored tree into our build folder: the references that tests and
benchmarks compare with."""

from __future__ import annotations

import glob
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_dir() -> Path:
    dirs = sorted(glob.glob(str(ROOT / "build" / "cp*")))
    if not dirs:
        raise RuntimeError("build the package first: ./dev build")
    return Path(dirs[-1])


def llama_tool(name: str) -> Path:
    """Build (incrementally) and locate one of llama.cpp's tools, e.g. ``llama-embedding``."""
    build = build_dir()
    done = subprocess.run(["cmake", "--build", str(build), "--target", name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not build {name}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    for candidate in build.rglob(name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} was not built")


def llama_embedding(
    model: str, texts: list[str], *, pooling: str, normalize: int, n_ctx: int, threads: int
) -> list[list[float]]:
    """The vectors of ``llama-embedding`` for `texts` (one prompt each; none may contain a newline)."""
    assert all("\n" not in t for t in texts)
    args = [
        str(llama_tool("llama-embedding")),
        "-m", model,
        "-p", "\n".join(texts),
        "--pooling", pooling,
        "--embd-normalize", str(normalize),
        "--embd-output-format", "array",
        "-c", str(n_ctx), "-b", str(n_ctx), "-ub", str(n_ctx),
        "-t", str(threads),
    ]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    vectors: list[list[float]] = json.loads(out[out.index("[[") :].strip())
    return vectors
