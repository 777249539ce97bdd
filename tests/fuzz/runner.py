"""The runner: cases to worker processes, a fresh worker after each crash or hang, results, failure reports
and saved failures, and rounds of cases from successive seeds."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuzz.common import ASAN, CASE_TIMEOUT_S, FAILURES, MEMORY_MB, ROOT, Case, fuzz_seconds
from tests.fuzz.gguf import gguf_bytes


@dataclass
class Result:
    case: Case
    status: str  # ok exception | crash hang memory printed bad-exception
    detail: str = ""
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.status in ("ok", "exception")


def _signal_name(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit code {rc}"


class _Events:
    """The worker's progress file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.events
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.events += [json.loads(line) for line in complete.splitlines()]
        return self.events


def _tail(path: Path, start: int) -> str:
    """What the worker wrote from `start` on; the head, where an assertion's message is (then a backtrace)."""
    try:
        return path.read_bytes()[start:][:1500].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _run_batch(
    tmp: Path, run: int, todo: list[tuple[int, Case]], tiny_model: str, case_timeout: float
) -> tuple[list[dict[str, Any]], int, bool, str]:
    """One worker over `todo`: its events, exit status, whether it was killed as hung, and its own output."""
    batch, progress = tmp / f"batch-{run}.json", tmp / f"progress-{run}"
    cases = dict(todo)
    batch.write_text(json.dumps({"tiny_model": tiny_model, "cases": todo}))
    events = _Events(progress)
    # ggml's abort handler would attach gdb for a backtrace (seconds); the assertion's line is enough.
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    if ASAN:  # huge allocations fail (bad_alloc) instead of aborting, as without ASan
        env["ASAN_OPTIONS"] += f":allocator_may_return_null=1:hard_rss_limit_mb={MEMORY_MB}"
    with open(tmp / f"stdout-{run}", "wb+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz", "worker", str(batch), str(progress)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started_at, current, hung = time.monotonic(), None, False
        while proc.poll() is None:
            time.sleep(0.02)
            seen = events.poll()
            last = seen[-1] if seen else None
            if last is not None and last["event"] == "start":
                if current != last["index"]:
                    current, started_at = last["index"], time.monotonic()
                limit = case_timeout * (2 if cases[current]["kind"] == "template" else 1)
            else:
                limit = 120.0  # start-up (imports) or between two cases
            if time.monotonic() - started_at > limit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hung = True
        out.seek(0)
        early = out.read().decode("utf-8", "replace")  # before the worker redirected its output
    return events.poll(), proc.returncode, hung, early


def run_cases(cases: list[Case], tiny_model: str, case_timeout: float = CASE_TIMEOUT_S) -> list[Result]:
    """Run every case in worker processes; a crash or hang costs only a fresh worker for the rest."""
    results: dict[int, Result] = {}
    todo = list(enumerate(cases))
    with tempfile.TemporaryDirectory(prefix="fuzz-run-") as tmp_dir:
        tmp = Path(tmp_dir)
        run = 0
        while todo:
            run += 1
            events, rc, hung, early = _run_batch(tmp, run, todo, tiny_model, case_timeout)
            output = tmp / f"progress-{run}.out"
            ready = next((e for e in events if e["event"] == "ready"), None)
            if ready is None or ready["printed"] or early:
                what = "did not start" if ready is None else "printed while importing the package"
                raise RuntimeError(f"the fuzz worker {what} ({_signal_name(rc)}):\n{early}{_tail(output, 0)}")
            ended = [e for e in events if e["event"] == "end"]
            for e in ended:
                results[e["index"]] = Result(cases[e["index"]], e["status"], e["detail"], e["seconds"])
            last = events[-1]
            printed = max([ready["printed"]] + [e["printed"] for e in ended])
            if last["event"] == "start":  # this case killed the worker, or hung
                index = last["index"]
                crash_log = _tail(tmp / f"progress-{run}.crash", 0)
                if hung:
                    limit = case_timeout * (2 if cases[index]["kind"] == "template" else 1)
                    results[index] = Result(cases[index], "hang", f"no answer within {limit:.0f} s", limit)
                else:
                    detail = f"{_signal_name(rc)}\n{_tail(output, printed)}\n{crash_log}".strip()
                    results[index] = Result(cases[index], "crash", detail)
            elif rc != 0 or _tail(output, printed):
                # Every case ended, but not the process: blame the last one (a replay tells more).
                index = last.get("index", ended[-1]["index"] if ended else todo[-1][0])
                detail = f"at exit: {_signal_name(rc)}, output {_tail(output, printed)!r}"
                results[index] = Result(cases[index], "crash" if rc else "printed", detail)
            todo = [(i, c) for i, c in todo if i not in results]
    return [results[i] for i in range(len(cases))]


def confirm_templates(results: list[Result], tiny_model: str) -> list[Result]:
    """Run again through ChatLlamaCpp each template that failed in process.

    `native.ChatTemplates` renders in this process and is meant for trusted templates (thousands of cases a
    second); ChatLlamaCpp renders in a sandbox process, and that is the way that must handle any template.
    """
    redo = [
        i for i, r in enumerate(results) if not r.clean and r.case["kind"] == "template" and r.case["via"] == "native"
    ]
    cases = [
        {**results[i].case, "via": "chat", "desc": results[i].case["desc"].replace("(native)", "(chat)")} for i in redo
    ]
    out = list(results)
    for i, again in zip(redo, run_cases(cases, tiny_model) if cases else [], strict=True):
        note = f" [in process: {results[i].status}: {results[i].detail[:300]}]"
        out[i] = Result(again.case, again.status, again.detail + note, again.seconds)
    return out


def save_failure(result: Result, name: str) -> Path:
    """The failing input, to look at and to replay (``python -m tests.fuzz replay``)."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    path = FAILURES / f"{stem}.json"
    path.write_text(json.dumps(result.case))
    if result.case["kind"] == "gguf":
        path.with_suffix(".gguf").write_bytes(gguf_bytes(result.case))
    else:
        ext = {"grammar": ".gbnf", "schema": ".schema.json", "template": ".jinja"}[result.case["kind"]]
        path.with_suffix(ext).write_text(result.case["text"], errors="surrogatepass")
    return path


def report(results: list[Result], label: str) -> str:
    """A failure message that names each bad input (and where it was saved)."""
    bad = [r for r in results if not r.clean]
    lines = [
        f"{len(bad)} of {len(results)} {label} inputs were not handled cleanly "
        f"(FUZZ_SEED={os.environ.get('FUZZ_SEED', '0')}, saved under {FAILURES.relative_to(ROOT)}):"
    ]
    for i, r in enumerate(bad):
        saved = save_failure(r, f"{label}-{i}-{r.case['desc'][:40]}")
        lines.append(
            f"- [{r.status}] {r.case['desc'][:200]}\n    {r.detail[:500]}\n    saved: {saved.relative_to(ROOT)}"
        )
    return "\n".join(lines)


def rounds(make: Callable[[random.Random, int], list[Case]], seed: int, n: int) -> Iterator[list[Case]]:
    """Batches of cases: one of `n`, or with FUZZ_SECONDS, batches from successive seeds until the time is up."""
    seconds = fuzz_seconds()
    if seconds is None:
        yield make(random.Random(seed), n)
        return
    deadline = time.monotonic() + seconds
    round_ = 0
    while round_ == 0 or time.monotonic() < deadline:
        yield make(random.Random(seed + round_ * 7919), n)
        round_ += 1
