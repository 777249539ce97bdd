"""The worker process (``python -m tests.fuzz worker``): feeds each case to its target, announcing it in a
progress file first, and records how it ended, what it printed and how much memory it took."""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fuzz.common import ASAN, MEMORY_BOMB_MB, MEMORY_MB, Case
from tests.fuzz.gguf import gguf_bytes
from tests.fuzz.prompt_cache import FOLLOW_UP, PROMPT, mutate
from tests.fuzz.templates import MESSAGES, TOOLS


class WrongAnswer(Exception):
    """A case gave an answer it must not (a damaged prompt cache file was used): never clean."""


class Targets:
    """What each kind of case is fed to, made on first use (inside the worker)."""

    def __init__(self, tiny_model: str, tmp: str) -> None:
        self.tiny_model = tiny_model
        self.tmp = tmp
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def llm(self) -> Any:
        from langchain_llamacpp import LlamaCpp

        # Temperature 1, fixed seed: grammars steer sampling through several branches, reproducibly.
        return self._get(
            "llm",
            lambda: LlamaCpp(
                model_path=self.tiny_model, max_tokens=4, temperature=1.0, seed=1, n_ctx=512, verbose=False
            ),
        )

    def vocab_model(self) -> Any:
        from langchain_llamacpp import native

        return self._get("vocab_model", lambda: native.load_model(self.tiny_model, vocab_only=True))

    def chat(self, **kwargs: Any) -> Any:
        from langchain_llamacpp import ChatLlamaCpp

        return ChatLlamaCpp(
            model_path=self.tiny_model, max_tokens=4, temperature=1.0, seed=1, n_ctx=512, verbose=False, **kwargs
        )

    def cached_llm(self, directory: str) -> Any:
        from langchain_llamacpp import LlamaCpp

        return LlamaCpp(
            model_path=self.tiny_model, max_tokens=4, temperature=0, n_ctx=512, n_seq=1, verbose=False,
            prompt_cache_dir=directory, prompt_cache_min_tokens=8,
        )  # fmt: skip

    def prompt_cache_base(self) -> tuple[str, bytes, set[str]]:
        """The file an engine saved for PROMPT, and the answers FOLLOW_UP may get: evaluated afresh, or
        from that file."""

        def make() -> tuple[str, bytes, set[str]]:
            from langchain_llamacpp import LlamaCpp

            saved = os.path.join(self.tmp, "prompt-cache-base")
            with self.cached_llm(saved) as llm:
                llm.invoke(PROMPT)
            deadline = time.monotonic() + 10
            while not (names := [n for n in os.listdir(saved) if n.endswith(".lcpc")]) and time.monotonic() < deadline:
                time.sleep(0.01)  # written in the background
            (name,) = names
            with LlamaCpp(
                model_path=self.tiny_model, max_tokens=4, temperature=0, n_ctx=512, n_seq=1, verbose=False
            ) as cold:
                answers = {cold.invoke(FOLLOW_UP)}
            with self.cached_llm(saved) as warm:
                answers.add(warm.invoke(FOLLOW_UP))
            return name, Path(saved, name).read_bytes(), answers

        return self._get("prompt_cache_base", make)

    def run_prompt_cache(self, case: Case, index: int) -> Any:
        name, base, answers = self.prompt_cache_base()
        directory = os.path.join(self.tmp, f"prompt-cache-{os.getpid()}-{index}")
        os.makedirs(directory, mode=0o700)
        Path(directory, name).write_bytes(mutate(base, case["ops"]))
        try:
            with self.cached_llm(directory) as llm:
                answer = llm.invoke(FOLLOW_UP)
        except Exception as e:
            raise WrongAnswer(f"the call failed: {type(e).__name__}: {e}") from e
        if answer not in answers:
            raise WrongAnswer(f"{answer!r}, not one of {sorted(answers)!r}")
        return answer

    def run(self, case: Case, index: int) -> str:
        return str(getattr(self, "run_" + case["kind"])(case, index))[:200]

    def run_gguf(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import LlamaCpp, native

        path = os.path.join(self.tmp, f"case-{os.getpid()}-{index}.gguf")  # a new path: no cached model reused
        Path(path).write_bytes(gguf_bytes(case))
        try:
            if case["mode"] == "vocab":
                model = native.load_model(path, vocab_only=True)
                tokens = model.tokenize("Hello world! <s> 日本語 \u200b\n\t12345", add_special=True, parse_special=True)
                text = model.detokenize(tokens, special=True)
                return (len(tokens), text, model.chat_template(), len(model.metadata()))
            with LlamaCpp(model_path=path, max_tokens=2, temperature=0, verbose=False) as llm:
                return llm.invoke("Hello")
        finally:
            os.unlink(path)

    def grammar(self, text: str, generate: bool) -> Any:
        """Check `text` as the engine does for a request; with `generate`, also sample a few tokens under it."""
        from langchain_llamacpp import native

        if generate:
            return self.llm().invoke("Hello", grammar=text)
        engine = self.llm().load()
        params = native.RequestParams()
        params.prompt = engine.model.tokenize("Hello", True, False)
        params.max_tokens = 1
        sampling = params.sampling
        sampling.grammar = text
        params.sampling = sampling
        request = engine.submit(params)  # parses and checks the grammar, or raises
        request.cancel()
        return request.wait(), request.finish_reason

    def run_grammar(self, case: Case, index: int) -> Any:
        return self.grammar(case["text"], case.get("generate", True))

    def run_schema(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import native

        if case["via"] == "structured":
            chat = self._get("chat", self.chat)  # one instance: one template process for all these cases
            return chat.with_structured_output(json.loads(case["text"])).invoke("Hello")
        return self.grammar(native.json_schema_to_grammar(case["text"]), case.get("generate", True))

    def run_template(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import native

        messages = MESSAGES if case["messages"] == "full" else MESSAGES[1:2]
        if case["via"] == "chat":
            from langchain_core.messages import convert_to_messages

            # Thinking off is `reasoning=False` (enable_thinking is deprecated, and its warning is output).
            reasoning = None if case.get("enable_thinking", True) else False
            chat = self.chat(chat_template=case["text"], reasoning=reasoning)
            runnable = chat.bind_tools(TOOLS) if case.get("tools") else chat
            return runnable.invoke(convert_to_messages(messages)).content
        templates = native.ChatTemplates(self.vocab_model(), case["text"])
        out = templates.apply(
            json.dumps(messages),
            json.dumps(TOOLS) if case["tools"] else "",
            "auto",
            False,
            "",
            case["add_generation_prompt"],
            {},
            case["enable_thinking"],
        )
        return out.prompt


def _outcome(fn: Callable[[], str]) -> dict[str, Any]:
    try:
        return {"status": "ok", "detail": fn()}
    except Exception as e:  # what any caller can catch
        message = str(e)
        # A clean failure is an exception that says what is wrong. SystemError means a broken binding;
        # UnicodeDecodeError, a native error message cut inside a UTF-8 character (the real one is lost);
        # WrongAnswer, a case that had to succeed with a known answer.
        if not message.strip() or isinstance(e, (SystemError, UnicodeDecodeError, WrongAnswer)):
            return {"status": "bad-exception", "detail": f"{type(e).__name__}: {message!r}"}
        return {"status": "exception", "detail": f"{type(e).__name__}: {message[:300]}"}
    except BaseException as e:  # KeyboardInterrupt, SystemExit, ...: not for a bad input
        return {"status": "bad-exception", "detail": f"{type(e).__name__}: {e}"}


def worker(batch_file: str, progress_file: str) -> None:
    # Everything the process writes, from here to its exit, goes to a file checked after each case.
    capture = os.open(progress_file + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    crash_log = open(progress_file + ".crash", "w")  # noqa: SIM115 - open until the process ends
    import faulthandler

    faulthandler.enable(crash_log)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not ASAN:  # ASan gets hard_rss_limit_mb instead (see _run_batch)
        memory = MEMORY_MB << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    batch = json.loads(Path(batch_file).read_text())
    progress = open(progress_file, "a", buffering=1)  # noqa: SIM115
    import langchain_llamacpp  # noqa: F401 - its import is not any case's fault

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        targets = Targets(batch["tiny_model"], tmp)
        printed = os.fstat(capture).st_size
        progress.write(json.dumps({"event": "ready", "printed": printed}) + "\n")
        for index, case in batch["cases"]:
            progress.write(json.dumps({"event": "start", "index": index}) + "\n")
            t0 = time.monotonic()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
            result = _outcome(lambda case=case, index=index: targets.run(case, index))  # type: ignore[misc]
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) >> 10
            if grown > MEMORY_BOMB_MB:
                result = {"status": "memory", "detail": f"{result['status']} after the peak memory grew by {grown} MB"}
            sys.stdout.flush()
            sys.stderr.flush()
            size = os.fstat(capture).st_size
            if size != printed:
                with open(progress_file + ".out", "rb") as f:
                    f.seek(printed)
                    text = f.read(min(size - printed, 2000)).decode("utf-8", "replace")
                result = {"status": "printed", "detail": f"{result['status']}, but printed: {text!r}"}
                printed = size
            result.update(event="end", index=index, seconds=round(time.monotonic() - t0, 3), printed=printed)
            progress.write(json.dumps(result) + "\n")
            if result["status"] == "memory":
                os._exit(0)  # the peak stays: the next cases need a fresh worker to be measured
        progress.write(json.dumps({"event": "done", "printed": printed}) + "\n")
