"""Instances across processes: fork() after loading, pickling to spawned processes, and
interpreter exit while a request is running."""

from __future__ import annotations

import copy
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings

# Python 3.12+ warns that fork() in a threaded process may deadlock the child: the engines'
# threads are what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")

TIMEOUT = 120  # seconds: a child that hangs fails its test instead of hanging the run


def _llm(path: str, **kwargs: Any) -> LlamaCpp:
    return LlamaCpp(model_path=path, **{"temperature": 0, "max_tokens": 12, "seed": 1, **kwargs})


def _in_forked_child(fn: Callable[[], Any]) -> Any:
    """fn() run in a child made by fork() (multiprocessing's "fork"), its result sent back."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child() -> None:
        try:
            results.put(("ok", fn()))
        except BaseException as e:
            results.put(("error", repr(e)))

    process = ctx.Process(target=child)
    process.start()
    try:
        kind, value = results.get(timeout=TIMEOUT)
    except Exception:
        pytest.fail(f"the forked child gave no result within {TIMEOUT} s (hung?)")
    finally:
        process.join(TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()
    assert kind == "ok", value
    assert process.exitcode == 0
    return value


def _run_script(code: str) -> subprocess.CompletedProcess[str]:
    """Run Python code in a new process group; kill the whole group (forked children too) on a hang."""
    with subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    ) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            pytest.fail(f"the script hung\nstdout: {stdout}\nstderr: {stderr}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


# -- fork ----------------------------------------------------------------------------------------


def test_llm_loaded_before_fork_works_in_the_child(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    expected = llm.invoke("Hello")
    assert _in_forked_child(lambda: llm.invoke("Hello")) == expected
    assert _in_forked_child(lambda: "".join(llm.stream("Hello"))) == expected
    assert llm.invoke("Hello") == expected  # the parent's engine is untouched


def test_chat_loaded_before_fork_works_in_the_child(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=12, seed=1)
    expected = chat.invoke("Hello").content
    assert _in_forked_child(lambda: chat.invoke("Hello").content) == expected


def test_embeddings_loaded_before_fork_work_in_the_child(tiny_model_path: str) -> None:
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path)
    expected = embeddings.embed_query("hello world")
    assert _in_forked_child(lambda: embeddings.embed_query("hello world")) == pytest.approx(expected, abs=1e-6)


def test_fork_while_another_thread_generates(tiny_model_path: str) -> None:
    """The parent's engine is busy at the moment of fork(); the child makes its own."""
    llm = _llm(tiny_model_path)
    expected = llm.invoke("Hello")
    streaming = threading.Event()
    stop = threading.Event()

    def generate() -> None:
        while not stop.is_set():
            for _ in llm.stream("Once upon a time", max_tokens=-1, ignore_eos=True):
                streaming.set()
                if stop.is_set():
                    return

    thread = threading.Thread(target=generate)
    thread.start()
    try:
        assert streaming.wait(TIMEOUT)
        assert _in_forked_child(lambda: llm.invoke("Hello")) == expected
    finally:
        stop.set()
        thread.join(TIMEOUT)
    assert llm.invoke("Hello") == expected


def test_forked_child_exits_normally(tiny_model_path: str) -> None:
    """A child made by os.fork() that ends with sys.exit runs atexit and tears the interpreter down
    (multiprocessing's children skip both): neither may touch the parent's engines."""
    code = f"""
import os, sys
from langchain_llamacpp import LlamaCpp
llm = LlamaCpp(model_path={tiny_model_path!r}, temperature=0, max_tokens=8)
expected = llm.invoke("Hello")
pid = os.fork()
if pid == 0:
    sys.exit(0 if llm.invoke("Hello") == expected else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""
    proc = _run_script(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0", proc.stderr
    assert proc.stderr == ""


# -- pickling ------------------------------------------------------------------------------------


def test_pickle_drops_the_loaded_engine(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=5, stop=["\n"])
    expected = chat.invoke("Hello").content
    assert chat._loaded is not None and chat._templates is not None
    restored = pickle.loads(pickle.dumps(chat))
    assert restored._loaded is None and restored._templates is None
    assert restored.model_dump() == chat.model_dump()
    assert restored.invoke("Hello").content == expected
    assert restored._loaded is chat._loaded  # loaded lazily: the same shared engine
    assert chat._loaded is not None  # the original keeps its engine


def test_deepcopy_shares_the_engine(tiny_model_path: str) -> None:
    llm = _llm(tiny_model_path)
    expected = llm.invoke("Hello")
    clone = copy.deepcopy(llm)
    assert clone._loaded is llm._loaded
    assert clone.invoke("Hello") == expected


def test_instances_pickle_to_a_spawned_process(tiny_model_path: str) -> None:
    """A spawn pool (as ProcessPoolExecutor or multiprocessing on macOS and Windows) gets the
    instance pickled, bound methods included; the child loads the model on first use."""
    llm = _llm(tiny_model_path)
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0, max_tokens=12, seed=1)
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path)
    text, message, vector = llm.invoke("Hello"), chat.invoke("Hello"), embeddings.embed_query("hello world")
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # leaving it kills the worker
        assert pool.apply_async(llm.invoke, ("Hello",)).get(TIMEOUT) == text
        assert pool.apply_async(chat.invoke, ("Hello",)).get(TIMEOUT).content == message.content
        assert pool.apply_async(embeddings.embed_query, ("hello world",)).get(TIMEOUT) == pytest.approx(vector)


# -- interpreter exit ----------------------------------------------------------------------------

_EXIT_SCRIPT = """
import asyncio, sys, threading, time
from langchain_llamacpp import LlamaCpp

llm = LlamaCpp(model_path={path!r}, temperature=0, max_tokens=-1, ignore_eos=True)
started = threading.Event()

def generate():
    if {how!r} == "invoke":
        started.set()
        llm.invoke("Once upon a time")
    elif {how!r} == "stream":
        for _ in llm.stream("Once upon a time"):
            started.set()
    else:
        async def consume():
            async for _ in llm.astream("Once upon a time"):
                started.set()
        asyncio.run(consume())
    print("the generation ended: max_tokens=-1 should outlast the main thread")

threading.Thread(target=generate, daemon=True).start()
started.wait()
time.sleep(0.2)  # well into the generation
"""


@pytest.mark.parametrize("how", ["invoke", "stream", "astream"])
def test_exit_with_a_request_in_flight_is_quiet(tiny_model_path: str, how: str) -> None:
    """The main thread ends while a daemon thread still generates: exit code 0, nothing printed."""
    proc = _run_script(_EXIT_SCRIPT.format(path=tiny_model_path, how=how))
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")
