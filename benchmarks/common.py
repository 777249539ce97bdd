"""Shared by the benchmark sections: rounds interleaved with a reference, llama.cpp's tools, the community side.

Each section measures a figure beside a reference taken in the same run (`interleave()`), and formats the
median ratio with its range over rounds (`Series`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from langchain_llamacpp import LlamaCpp
from tests.llama_tools import llama_tool

ROOT = Path(__file__).resolve().parents[1]


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


def llama_bench(
    model: str, threads: int, pp: int, tg: int, depth: str = "0", reps: int = 1, tool: str | None = None
) -> dict[str, float]:
    """llama-bench's figures; `tool`: another build of it (default: the one in the extension's build folder)."""
    args = ["-m", model, "-t", str(threads), "-p", str(pp), "-n", str(tg), "-d", depth, "-r", str(reps), "-o", "json"]
    exe = tool or str(llama_tool("llama-bench"))
    out = subprocess.run([exe, *args], check=True, capture_output=True, text=True).stdout
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


def sequential_and_batched(llm: LlamaCpp, prompts: list[str]) -> tuple[float, float]:
    """Seconds for the prompts as calls one after another, then as one batch()."""
    t0 = time.perf_counter()
    for p in prompts:
        llm.invoke(p)
    sequential = time.perf_counter() - t0
    t0 = time.perf_counter()
    llm.batch(prompts)
    return sequential, time.perf_counter() - t0


# -- servers in processes of their own ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running(args: list[str], port: int, ready_s: float = 600) -> Iterator[str]:
    """A server process started with `args` (listening on loopback at `port`), once its /health answers;
    yields its /v1 URL, and stops it at the end."""
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_s
        while True:
            if process.poll() is not None:
                log = process.stderr.read() if process.stderr else ""
                raise RuntimeError(f"{args[0]} exited {process.returncode}: {log[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{args[0]} did not become ready in {ready_s:.0f} s")
            time.sleep(0.5)
        yield f"{url}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:  # llama-server has once hung on SIGTERM after a run
            process.kill()
            process.wait(timeout=20)


def llama_server(path: str, threads: int, n_ctx: int, slots: int = 1) -> contextlib.AbstractContextManager[str]:
    """llama.cpp's own server on `path` (built from the vendored tree, as upstream builds it), `slots` sharing
    `n_ctx` cells, on loopback only; yields its /v1 URL."""
    from tests.llama_tools import reference_tool

    port = free_port()
    args = [
        str(reference_tool("llama-server")),
        "-m", path, "--jinja", "--host", "127.0.0.1", "--port", str(port),
        "-c", str(n_ctx), "-np", str(slots), "-t", str(threads), "--no-repack", "--no-webui",
    ]  # fmt: skip
    return running(args, port)
