"""The prompt cache on disk (`prompt_cache_dir`, native/prompt_cache.h): its file check before llama.cpp
sees a byte, the planner's choice to restore, and engines on the tiny model in one process and in two."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from langchain_llamacpp import LlamaCpp, _native
from tests.fuzz.prompt_cache import FOLLOW_UP, HEADER, PROMPT, mutate, prompt_file, reseal

KEY = bytes(range(32))
TOKENS = [1, 2, 3, -7, -7, 9]
STATE = b"llama.cpp's state bytes" * 10
FILE = prompt_file(KEY, TOKENS, STATE, media=[(3, 2, b"sha-of-the-image")])


def test_a_file_gives_back_its_tokens_media_and_state() -> None:
    assert _native._read_prompt_file(FILE, KEY) == (TOKENS, [3], STATE)
    m_rope = prompt_file(KEY, TOKENS, STATE, media=[(3, 2, b"sha-of-the-image", 1)])  # 2 cells at 1 position
    assert _native._read_prompt_file(m_rope, KEY) == (TOKENS, [3], STATE)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (mutate(FILE, [["flip", len(FILE) - 5, 0]]), "checksum mismatch"),
        (mutate(FILE, [["flip", HEADER + 6, 3]]), "checksum mismatch"),  # a token
        (mutate(FILE, [["flip", 70, 1]]), "checksum mismatch"),  # the checksum itself
        (FILE[:-1], "truncated"),
        (FILE[: HEADER + 10], "truncated"),
        (FILE[:HEADER], "truncated"),
        (FILE[:40], "truncated"),
        (b"", "truncated"),
        (FILE + b"\0", "trailing bytes"),
        (prompt_file(bytes(32), TOKENS, STATE), "key mismatch"),
        (prompt_file(KEY, TOKENS, STATE, version=1), "format version 1"),
        (mutate(FILE, [["field", "header_size", 96]]), "bad header size 96"),
        (b"GGUF" + FILE[4:], "bad magic"),
        (mutate(FILE, [["field", "payload_size", len(FILE)]]), "truncated"),
        # Forged: the counts changed and the checksum made to match. Still no read past the payload.
        (mutate(FILE, [["forge", "n_tokens", 2**32 - 1]]), "bad token count"),
        (mutate(FILE, [["forge", "n_tokens", 0]]), "bad token count"),
        (mutate(FILE, [["forge", "n_media", 7]]), "bad media count"),
        (mutate(FILE, [["forge", "state_size", 2**63]]), "bad state size"),
        (reseal(FILE[:-3]), "truncated"),
        # Media entries whose positions could not be counted: more positions than cells, none, overlapping.
        (prompt_file(KEY, TOKENS, STATE, media=[(3, 2, b"sha", 3)]), "bad media entry"),
        (prompt_file(KEY, TOKENS, STATE, media=[(3, 2, b"sha", 0)]), "bad media entry"),
        (prompt_file(KEY, TOKENS, STATE, media=[(3, 2, b"a"), (4, 2, b"b")]), "bad media entry"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_damaged_or_foreign_file_is_refused_saying_why(data: bytes, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        _native._read_prompt_file(data, KEY)


def test_every_cut_of_a_file_is_refused() -> None:
    for n in range(len(FILE)):
        with pytest.raises(ValueError):
            _native._read_prompt_file(FILE[:n], KEY)


def _slots(*specs: dict[str, int]) -> list[_native._SlotView]:
    views = []
    for spec in specs:
        v = _native._SlotView()
        for name, value in spec.items():
            setattr(v, name, value)
        views.append(v)
    return views


def test_plan_restores_a_stored_prefix_longer_than_any_slot_holds() -> None:
    slots = _slots({"cached": 100, "prefix": 20, "last_used": 1}, {"cached": 0})
    plan = _native._plan_placement(slots, prompt=3000, reserve=3100, unified=True, pool=4096, stored=2990)
    # The empty slot: the other conversation's cache stays for it.
    assert (plan.slot, plan.prefix, plan.restore, plan.donor) == (1, 2990, True, -1)
    # A slot holding as much (or a slot sharing it) wins: no disk read is worth it.
    plan = _native._plan_placement(slots, prompt=3000, reserve=3100, unified=True, pool=4096, stored=20)
    assert (plan.prefix, plan.restore) == (20, False)


def test_plan_makes_room_for_a_restored_prefix_in_the_pool() -> None:
    slots = _slots({"cached": 3000, "last_used": 1}, {"cached": 0})
    plan = _native._plan_placement(slots, prompt=3000, reserve=3100, unified=True, pool=4096, stored=2990)
    assert (plan.slot, plan.restore, plan.evict) == (1, True, [0])


# -- engines on the tiny model ---------------------------------------------------------------------

# batch_invariant: the prompt's tail evaluated after a restored prefix gives the very logits of the whole
# prompt evaluated afresh, so that the greedy answers must be equal.
SETTINGS = {"max_tokens": 8, "temperature": 0, "n_ctx": 512, "batch_invariant": True, "verbose": False}


def _llm(tiny: str, directory: Path | None, **extra: object) -> LlamaCpp:
    cache = {} if directory is None else {"prompt_cache_dir": str(directory), "prompt_cache_min_tokens": 8}
    return LlamaCpp(model_path=tiny, **{**SETTINGS, **cache, **extra})  # type: ignore[arg-type]


def _saved(directory: Path, n: int = 1, timeout: float = 30) -> list[Path]:
    """The cache's files once there are `n` (saves run in the background)."""
    deadline = time.monotonic() + timeout
    while len(files := sorted(directory.glob("*.lcpc"))) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return files


def _answer(llm: LlamaCpp, prompt: str) -> tuple[str, int]:
    generation = llm.generate([prompt]).generations[0][0]
    return generation.text, generation.generation_info["usage"]["cached_tokens"]  # type: ignore[index]


_SCRIPT = """
import json, sys
from langchain_llamacpp import LlamaCpp
settings = json.loads(sys.argv[1])
llm = LlamaCpp(**settings)
out = []
for prompt in json.loads(sys.argv[2]):
    g = llm.generate([prompt]).generations[0][0]
    out.append([g.text, g.generation_info["usage"]["cached_tokens"], len(llm.get_token_ids(prompt))])
print(json.dumps(out))
"""


def _in_new_process(settings: dict[str, object], prompts: list[str]) -> list[list[object]]:
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(settings), json.dumps(prompts)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_new_process_restores_what_an_earlier_one_saved(tiny_model_path: str, tmp_path: Path) -> None:
    tiny = str(Path(tiny_model_path).resolve())
    cached = {"model_path": tiny, "prompt_cache_dir": str(tmp_path), "prompt_cache_min_tokens": 8, **SETTINGS}
    # The first process saves PROMPT (a short prompt is not saved) and exits at once: the save is
    # written before it ends.
    _in_new_process(cached, ["Hi", PROMPT])
    assert len(list(tmp_path.glob("*.lcpc"))) == 1
    ((warm, n_cached, n_prompt),) = _in_new_process(cached, [FOLLOW_UP])
    ((cold, n_cold, _),) = _in_new_process({"model_path": tiny, **SETTINGS}, [FOLLOW_UP])
    # PROMPT's tokens but the last, which may merge with the text after it.
    n_saved = len(LlamaCpp(model_path=tiny).get_token_ids(PROMPT)) - 1
    assert n_cold == 0 and n_saved <= n_cached < n_prompt  # type: ignore[operator]
    assert warm == cold


def test_a_damaged_file_is_ignored_with_a_warning(
    tiny_model_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with _llm(tiny_model_path, tmp_path / "a") as llm:
        llm.invoke(PROMPT)
    (saved,) = _saved(tmp_path / "a")
    damaged = tmp_path / "b"
    damaged.mkdir(mode=0o700)
    (damaged / saved.name).write_bytes(mutate(saved.read_bytes(), [["flip", -100, 2]]))
    with caplog.at_level(logging.WARNING, logger="langchain_llamacpp"), _llm(tiny_model_path, damaged) as llm:
        answer, n_cached = _answer(llm, FOLLOW_UP)
    assert any(
        "checksum mismatch (corrupted)" in r.getMessage() and saved.name in r.getMessage() for r in caplog.records
    )
    with _llm(tiny_model_path, None) as cold:
        assert (answer, n_cached) == (cold.invoke(FOLLOW_UP), 0)


def test_a_directory_others_may_write_is_warned_about(
    tiny_model_path: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="langchain_llamacpp"), _llm(tiny_model_path, shared) as llm:
        llm.load()
    assert any("writable by other users" in r.getMessage() for r in caplog.records)
    created = tmp_path / "new" / "cache"
    with _llm(tiny_model_path, created) as llm:
        llm.load()
    assert stat.S_IMODE(created.stat().st_mode) == 0o700


def test_the_least_recently_used_files_go_past_max_bytes(tiny_model_path: str, tmp_path: Path) -> None:
    with _llm(tiny_model_path, tmp_path / "probe") as llm:
        llm.invoke(PROMPT)
    (probe,) = _saved(tmp_path / "probe")
    size = probe.stat().st_size
    directory = tmp_path / "lru"
    with _llm(tiny_model_path, directory, prompt_cache_max_bytes=int(size * 1.2)) as llm:
        llm.invoke(PROMPT)
        (first,) = _saved(directory)
        llm.invoke("Another sentence, quite unlike the first one. " * 3)
        deadline = time.monotonic() + 30
        while first.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not first.exists() and len(list(directory.glob("*.lcpc"))) == 1


def test_settings_are_checked(tiny_model_path: str, tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        _llm(tiny_model_path, a_file).load()
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _llm(tiny_model_path, tmp_path, prompt_cache_min_tokens=0)
    assert os.path.isdir(tmp_path)
