"""Chat templates rendered in a sandbox process.

A chat template is Jinja code inside the GGUF file, written by whoever made the file, and llama.cpp's
Jinja interpreter has no budget of its own: a template can loop ten billion times, allocate without
bound or recurse until the stack overflows. ChatLlamaCpp therefore renders in a small worker process
(`native/template_worker.cpp`, the same llama.cpp code as in-process rendering) with a deadline per
render and a cap on its memory. A render past its deadline kills the worker, a crash is reported
with its signal, and either way the next call starts a fresh worker. A render costs a round trip
through a pipe (tens of microseconds) on top of the template's own work.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import struct
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import langchain_llamacpp._native as _native

WORKER = Path(_native.__file__).with_name("llamacpp-template-worker")

# Limits. Measured on every template in llama.cpp's models/templates (70 files, up to 17 KB): parsing
# and probing takes at most 0.13 s, a render with a tool at most 8 ms, and the worker's peak memory is
# 28 MB. The limits leave two orders of magnitude or more of room. Time limits count the worker's CPU
# time, so that a busy machine (a CI runner, a server under load) slows a render without failing it;
# a worker that uses no CPU and does not answer either is stopped after WALL_FACTOR times the limit.
#: CPU-time limit on one render.
RENDER_TIMEOUT_S = 10.0
#: CPU-time limit on parsing a template and probing what it supports (llama.cpp renders it a few times).
INIT_TIMEOUT_S = 10.0
#: CPU-time limit on reading the model's vocabulary and template in the worker (no weights are read).
LOAD_TIMEOUT_S = 300.0
#: Wall-clock backstop, as a multiple of the CPU-time limit.
WALL_FACTOR = 10.0
#: Address-space limit of the worker: a memory bomb in a template becomes a clean error in seconds.
MEMORY_LIMIT_BYTES = 1 << 30

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_U32 = struct.Struct("<I")
_live: weakref.WeakSet[TemplateSandbox] = weakref.WeakSet()


@dataclass(frozen=True)
class RenderInputs:
    """What a chat template is rendered with: the keywords of `_native.ChatTemplates.apply`, typed."""

    messages_json: str
    tools_json: str = ""  # "": no tools
    tool_choice: str = "auto"  # "auto", "required" or "none"
    parallel_tool_calls: bool = False
    json_schema: str = ""  # "": no structured output
    add_generation_prompt: bool = True
    template_kwargs: Mapping[str, str] = field(default_factory=dict)
    enable_thinking: bool = True
    reasoning_format: str = "auto"  # "none": thinking stays in the content

    def keywords(self) -> dict[str, Any]:
        """For `_native.ChatTemplates.apply(**...)`, which renders in this process."""
        keywords = {f.name: getattr(self, f.name) for f in fields(self)}
        keywords["template_kwargs"] = dict(self.template_kwargs)
        return keywords


class TemplateSandbox:
    """One model's chat template(s), rendered in a worker process. Thread-safe; fork-safe."""

    def __init__(self, model_path: str, kv_overrides: Sequence[tuple[str, str]], override_template: str) -> None:
        self._load = ["load", model_path, *(part for pair in kv_overrides for part in pair)]
        self._init = ["init", override_template]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._failed: ValueError | None = None
        _live.add(self)

    def apply(self, inputs: RenderInputs) -> dict[str, Any]:
        """Render messages; the same result as `_native.ChatTemplates.apply(**inputs.keywords())`."""
        request = [
            "apply",
            inputs.messages_json,
            inputs.tools_json,
            inputs.tool_choice,
            "1" if inputs.parallel_tool_calls else "0",
            inputs.json_schema,
            "1" if inputs.add_generation_prompt else "0",
            "1" if inputs.enable_thinking else "0",
            inputs.reasoning_format,
            *(part for kv in inputs.template_kwargs.items() for part in kv),
        ]
        with self._lock:
            self._start()
            return _decode_rendered(self._exchange(request, RENDER_TIMEOUT_S, "rendering"))

    def close(self) -> None:
        """Stop the worker (a later call starts another)."""
        with self._lock:
            self._stop()

    # -- worker lifecycle ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._failed is not None:
            raise self._failed
        if self._proc is not None and self._owner == os.getpid() and self._proc.poll() is None:
            return
        self._forget()
        if not WORKER.exists():
            raise RuntimeError(f"the chat-template worker is missing ({WORKER}); reinstall langchain-llamacpp")
        self._proc = subprocess.Popen(
            [str(WORKER), str(MEMORY_LIMIT_BYTES)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            # Its own session: Ctrl-C in a terminal is for the caller, which stops the worker itself.
            start_new_session=True,
        )
        self._owner = os.getpid()
        self._finalizer = weakref.finalize(self, _stop_process, self._proc, self._owner)
        try:
            self._exchange(self._load, LOAD_TIMEOUT_S, "reading the model's vocabulary")
            self._exchange(self._init, INIT_TIMEOUT_S, "the trial renders llama.cpp makes to learn its features")
        except ValueError as e:
            # The same template fails the same way: later calls raise at once.
            self._failed = e
            self._stop()
            raise
        except BaseException:
            self._stop()
            raise

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
        self._proc = None
        self._finalizer = None

    def _forget(self) -> None:
        """Drop a worker this process does not own (inherited through fork) without touching it."""
        if self._proc is not None and self._owner != os.getpid():
            if self._finalizer is not None:
                self._finalizer.detach()
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self._proc = None
            self._finalizer = None
        elif self._proc is not None:  # exited (crashed earlier, or killed)
            self._stop()

    # -- protocol -----------------------------------------------------------------------------

    def _exchange(self, fields: list[str], timeout: float, doing: str) -> list[bytes]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        try:
            payload = [f.encode("utf-8") for f in fields]
            proc.stdin.write(_U32.pack(len(payload)) + b"".join(_U32.pack(len(p)) + p for p in payload))
            proc.stdin.flush()
            reply = _read_message(proc.stdout.fileno(), timeout, proc.pid)
        except TimeoutError:
            self._stop()
            raise ValueError(
                f"the chat template did not finish {doing} within {timeout:g} s of CPU time and was stopped "
                "(an endless or very large loop in the template?)"
            ) from None
        except (BrokenPipeError, EOFError):
            code = proc.wait()
            self._proc = None
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            raise ValueError(
                f"the chat template crashed llama.cpp's Jinja engine ({how}) during {doing} (too deep "
                "recursion in the template?); it ran in a separate process, so only that process was lost"
            ) from None
        except BaseException:  # KeyboardInterrupt mid-render: the worker's state is unknown
            self._stop()
            raise
        if reply and reply[0] == b"ok":
            return reply
        kind = reply[1].decode() if len(reply) > 2 else "RuntimeError"
        message = reply[2].decode("utf-8", "replace") if len(reply) > 2 else "malformed reply"
        if kind == "FileNotFoundError":
            raise FileNotFoundError(message)
        if kind == "MemoryError":
            raise ValueError(f"{message} ({MEMORY_LIMIT_BYTES >> 20} MiB)")
        if kind == "ValueError":
            raise ValueError(message)
        raise RuntimeError(message)


def _cpu_seconds(pid: int) -> float | None:
    """CPU time a process has used (Linux), or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (name) ", fields start at the state
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime + stime


def _read_message(fd: int, timeout: float, pid: int) -> list[bytes]:
    start = time.monotonic()
    cpu_start = _cpu_seconds(pid)
    backstop = start + (timeout * WALL_FACTOR if cpu_start is not None else timeout)
    buf = bytearray()

    def over_budget() -> bool:
        now = time.monotonic()
        if now >= backstop:
            return True
        used = _cpu_seconds(pid) if cpu_start is not None else None
        return used is not None and cpu_start is not None and used - cpu_start > timeout

    def need(n: int) -> None:
        while len(buf) < n:
            wait = min(0.25, max(backstop - time.monotonic(), 0.0))
            if not select.select([fd], [], [], wait)[0]:
                if over_budget():
                    raise TimeoutError
                continue
            chunk = os.read(fd, max(n - len(buf), 1 << 16))
            if not chunk:
                raise EOFError
            buf.extend(chunk)

    need(4)
    (count,) = _U32.unpack_from(buf, 0)
    pos = 4
    fields = []
    for _ in range(count):
        need(pos + 4)
        (size,) = _U32.unpack_from(buf, pos)
        pos += 4
        need(pos + size)
        fields.append(bytes(buf[pos : pos + size]))
        pos += size
    return fields


def _decode_rendered(f: list[bytes]) -> dict[str, Any]:
    def text(i: int) -> str:
        return f[i].decode("utf-8", "replace")

    out: dict[str, Any] = {
        "prompt": text(1),
        "format": int(f[2]),
        "format_name": text(3),
        "grammar": text(4),
        "grammar_lazy": f[5] == b"1",
        "generation_prompt": text(6),
        "parser": text(7),
        "supports_thinking": f[8] == b"1",
    }
    i = 9
    n = int(f[i])
    out["grammar_triggers"] = [(int(f[i + 1 + 3 * k]), text(i + 2 + 3 * k), int(f[i + 3 + 3 * k])) for k in range(n)]
    i += 1 + 3 * n
    for key in ("preserved_tokens", "additional_stops"):
        n = int(f[i])
        out[key] = [text(i + 1 + k) for k in range(n)]
        i += 1 + n
    out["thinking_start_tag"] = text(i)
    n = int(f[i + 1])
    out["thinking_end_tags"] = [text(i + 2 + k) for k in range(n)]
    return out


def _stop_process(proc: subprocess.Popen[bytes], owner: int) -> None:
    if os.getpid() != owner:
        return
    try:
        proc.kill()  # it holds no state worth a graceful exit
        proc.wait()
    except OSError:
        pass
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _after_fork_in_child() -> None:
    # The child must not write to its parent's workers, nor keep their pipes open.
    for sandbox in list(_live):
        sandbox._lock = threading.Lock()
        sandbox._forget()


os.register_at_fork(after_in_child=_after_fork_in_child)
