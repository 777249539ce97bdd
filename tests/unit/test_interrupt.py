"""Ctrl-C (SIGINT) during a blocking call: KeyboardInterrupt within a step or two, the request cancelled,
the engine usable afterwards. Each case runs in its own process, so pytest's own SIGINT handling stays out."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from langchain_llamacpp import LlamaCpp

    llm = LlamaCpp(model_path=sys.argv[1], n_ctx=0, temperature=0)
    mode = sys.argv[2]
    expected = llm.invoke("Hello", max_tokens=4)

    def call(n):
        if mode == "invoke":
            return llm.invoke("Once upon a time", ignore_eos=True, max_tokens=n)
        if mode == "batch":
            return llm.batch(["Once upon a time", "In a land"], ignore_eos=True, max_tokens=n)
        return "".join(llm.stream("Once upon a time", ignore_eos=True, max_tokens=n))

    # How long 300 tokens take; the signal then comes at half of that, during a call six times as long,
    # so that a machine whose speed varies (a busy CI runner) still interrupts it in the middle.
    start = time.monotonic()
    call(300)
    whole = time.monotonic() - start
    threading.Timer(whole / 2, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        call(1800)
        print("NOT INTERRUPTED")
        sys.exit(1)
    except KeyboardInterrupt:
        took = time.monotonic() - start
    assert took < whole * 2, (took, whole)
    # The interrupted request was cancelled: nothing decodes any more.
    engine = llm.load()
    time.sleep(0.3)
    before = engine.stats().tokens_decoded
    time.sleep(0.5)
    assert engine.stats().tokens_decoded == before, "the interrupted request kept decoding"
    assert llm.invoke("Hello", max_tokens=4) == expected
    print("OK", round(whole, 3), round(took, 3))
    """
)


@pytest.mark.parametrize("mode", ["invoke", "batch", "stream"])
def test_ctrl_c_interrupts_a_blocking_call(tiny_model_path: str, mode: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tiny_model_path, mode], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("OK"), done.stdout
