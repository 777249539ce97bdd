"""The prompt cache on disk with a real model (SmolLM2): a process saves a long prompt's state at exit, a
new process restores it for a prompt that starts with it, and gives the greedy answer of a cold start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.texts import chatml, committee_minutes

DOCUMENT = committee_minutes(19)
# As chat turns (SmolLM2 is a ChatML instruct model): a bare completion of these ends at once, and two
# empty answers would be equal whatever the cache did.
FIRST = chatml(DOCUMENT + "\nWhich section mentions item 3?")
SECOND = chatml(DOCUMENT + "\nWhat did the committee agree to do about each item?")

_SCRIPT = """
import json, sys
from langchain_llamacpp import LlamaCpp
settings, prompt = json.loads(sys.argv[1])
g = LlamaCpp(**settings).generate([prompt]).generations[0][0]
print(json.dumps([g.text, g.generation_info["usage"]["cached_tokens"], g.generation_info["usage"]["prompt_tokens"]]))
"""


def _in_new_process(settings: dict[str, object], prompt: str) -> list[object]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps([settings, prompt])],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_prefix_saved_by_one_process_is_restored_by_the_next(smollm_path: str, tmp_path: Path) -> None:
    # batch_invariant: a restored prefix gives the logits of the prompt evaluated afresh, exactly.
    base = {"model_path": smollm_path, "max_tokens": 16, "temperature": 0, "n_ctx": 2048, "batch_invariant": True}
    cached = {**base, "prompt_cache_dir": str(tmp_path)}
    _, _, n_first = _in_new_process(cached, FIRST)
    (saved,) = tmp_path.glob("*.lcpc")
    warm, n_cached, n_second = _in_new_process(cached, SECOND)
    cold, n_cold, _ = _in_new_process(base, SECOND)
    assert n_first >= 512 and n_cold == 0 and cold != ""  # type: ignore[operator]
    # The shared document is restored; the rest of the prompt evaluated.
    assert n_first - 20 < n_cached < n_second  # type: ignore[operator]
    assert warm == cold
    # A damaged file: ignored (a warning in the log, nothing printed), the cold answer.
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0x40
    saved.write_bytes(bytes(data))
    assert _in_new_process(cached, SECOND) == [cold, 0, n_second]


def test_with_default_kernels_a_restore_lands_on_the_cold_runs_chunks(smollm_path: str, tmp_path: Path) -> None:
    # The CPU kernels round by micro-batch shape: the restored run evaluates the rest of the prompt from the
    # largest chunk boundary (n_ubatch) within the saved prompt's whole chunks, as a cold run does, and
    # gives its greedy answer. Small chunks: the prefix spans several, and neither prompt ends on one.
    base = {"model_path": smollm_path, "max_tokens": 24, "temperature": 0, "n_ctx": 2048, "n_seq": 1}
    base |= {"n_batch": 128, "n_ubatch": 128}
    cached = {**base, "prompt_cache_dir": str(tmp_path)}
    _, _, n_first = _in_new_process(cached, FIRST)
    warm, n_cached, _ = _in_new_process(cached, SECOND)
    cold, _, _ = _in_new_process(base, SECOND)
    assert warm == cold and len(str(cold)) > 40
    # The rule: the shared document's tokens, cut to a multiple of 128 (the first prompt's last partial
    # chunk and its reply were computed in other shapes than a cold run of the second computes them).
    from langchain_llamacpp import LlamaCpp

    llm = LlamaCpp(model_path=smollm_path)
    first, second = llm.get_token_ids(FIRST), llm.get_token_ids(SECOND)
    shared = next(i for i, (a, b) in enumerate(zip(first, second, strict=False)) if a != b)
    assert n_first == len(first) and n_first % 128 != 0 and shared % 128 != 0 and shared > 3 * 128
    assert n_cached == min(shared, n_first // 128 * 128) // 128 * 128 and 0 < n_cached < shared
