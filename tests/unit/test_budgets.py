"""Budgets on what strangers write: chat templates (run in the sandbox worker), grammars and JSON schemas.

Each hostile input must end in a clear ValueError within its budget, leave the process and the
instance usable, and every real template and grammar from llama.cpp must still work.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import langchain_llamacpp._templates as _templates
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native
from tests import timing

VENDOR = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp"
TEMPLATES = sorted((VENDOR / "models" / "templates").glob("*.jinja"))
GRAMMARS = sorted((VENDOR / "grammars").glob("*.gbnf"))
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def short_budgets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The same mechanism as the defaults (10 s, 1 GiB), sized so the suite stays quick.
    monkeypatch.setattr(_templates, "RENDER_TIMEOUT_S", 2.0 * timing.SCALE)
    monkeypatch.setattr(_templates, "INIT_TIMEOUT_S", 2.0 * timing.SCALE)
    monkeypatch.setattr(_templates, "MEMORY_LIMIT_BYTES", 256 << 20)
    yield


def _chat(path: str, template: str) -> ChatLlamaCpp:
    return ChatLlamaCpp(model_path=path, chat_template=template, max_tokens=2, temperature=0, verbose=False)


def _completion(path: str, prompt: str) -> str:
    """What `_chat` answers where its template renders the message's text as it is."""
    return LlamaCpp(model_path=path, max_tokens=2, temperature=0, verbose=False).invoke(prompt)


HOSTILE = {
    # Killed the process before the sandbox (SIGSEGV).
    "self-calling macro": ("{% macro f(x) %}{{ f(x) }}{% endmacro %}{{ f(1) }}", "crashed"),
    "5000 nested parentheses": ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nests brackets or blocks"),
    "3000 nested ifs": ("{% if true %}" * 3000 + "x" + "{% endif %}" * 3000, "nests brackets or blocks"),
    # Hung the process before the sandbox.
    "range of ten billion": ("{% for i in range(10000000000) %}x{% endfor %}", None),
    "nested ranges": ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", None),
    "string times ten billion": ("{{ 'a' * 10000000000 }}", None),
    "doubling a string": (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        None,
    ),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_template_raises_within_its_budget(tiny_model_path: str, short_budgets: None, name: str) -> None:
    template, match = HOSTILE[name]
    chat = _chat(tiny_model_path, template)
    for _ in range(2):
        start = time.monotonic()
        with pytest.raises(ValueError, match=match) as caught:
            chat.invoke("hi")
        took = time.monotonic() - start
        # Init and render budgets (CPU time, so a busy machine stretches them), plus a worker's start.
        assert took < (2 * 2.0 * _templates.WALL_FACTOR + 5) * timing.SCALE, took
        assert "template" in str(caught.value)
    # The process and other instances are unharmed: another template renders "hi" as it should.
    reply = _chat(tiny_model_path, "{% for m in messages %}{{ m['content'] }}{% endfor %}").invoke("hi")
    assert reply.content == _completion(tiny_model_path, "hi")


def test_template_that_fails_to_load_fails_at_once_afterwards(tiny_model_path: str, short_budgets: None) -> None:
    chat = _chat(tiny_model_path, "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")
    with pytest.raises(ValueError, match="trial renders"):
        chat.invoke("hi")
    start = time.monotonic()
    with pytest.raises(ValueError, match="trial renders"):
        chat.invoke("hi")
    assert time.monotonic() - start < 0.5 * timing.SCALE


def test_template_hostile_only_for_some_messages(tiny_model_path: str, short_budgets: None) -> None:
    # Passes llama.cpp's trial renders (two messages), explodes on a longer chat: the render budget catches it.
    if timing.SANITIZED:
        pytest.skip("a trial render allocates 10 GB: bad_alloc under the worker's RLIMIT_AS, which ASan cannot have")
    template = "{% if messages|length > 3 %}{{ 'a' * 10000000000 }}{% endif %}{{ messages[-1]['content'] }}"
    chat = _chat(tiny_model_path, template)
    assert chat.invoke("hi").content == _completion(tiny_model_path, "hi")
    with pytest.raises(ValueError, match="template"):
        chat.invoke([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"), ("user", "e")])
    assert chat.invoke("again").content == _completion(tiny_model_path, "again")  # a fresh worker took over


def test_real_templates_render_in_the_sandbox(tiny_model_path: str) -> None:
    assert len(TEMPLATES) > 50
    messages = json.dumps([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}])
    deepest = 0
    for path in TEMPLATES:
        source = path.read_text()
        deepest = max(deepest, native.check_chat_template(source))
        sandbox = _templates.TemplateSandbox(tiny_model_path, (), source)
        try:
            rendered = sandbox.apply(_templates.RenderInputs(messages, tools_json=json.dumps([TOOL])))
        finally:
            sandbox.close()
        assert "hello there" in rendered.prompt, path.name
    # The documented headroom: the nesting limit is far above what real templates use.
    assert deepest * 10 < 200


def test_sandbox_renders_what_llama_cpp_renders_in_process(tiny_model_path: str) -> None:
    chat = _chat(tiny_model_path, "")
    model = chat.load().model
    inputs = _templates.RenderInputs(
        json.dumps([{"role": "user", "content": "hi"}]), tools_json=json.dumps([TOOL]), parallel_tool_calls=True
    )
    assert chat._chat_templates().apply(inputs) == native.ChatTemplates(model, "").apply(**inputs.keywords())


def test_worker_killed_from_outside_is_replaced(tiny_model_path: str) -> None:
    chat = _chat(tiny_model_path, "")
    first = chat.invoke("hi").content
    sandbox = chat._templates
    assert sandbox is not None and sandbox._proc is not None
    old = sandbox._proc.pid
    os.kill(old, signal.SIGKILL)  # say, the OOM killer, while the worker was idle
    sandbox._proc.wait()
    assert chat.invoke("hi").content == first
    assert sandbox._proc is not None and sandbox._proc.pid != old


def test_worker_is_private_to_each_process(tiny_model_path: str) -> None:
    # After fork the child renders with a worker of its own; the parent's keeps working.
    chat = _chat(tiny_model_path, "")
    expected = chat.invoke("hi").content
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            code = 0 if chat.invoke("hi").content == expected else 3
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert chat.invoke("hi").content == expected


CTRL_C = textwrap.dedent(
    """
    import os, signal, sys, threading, time
    from langchain_llamacpp import ChatLlamaCpp
    slow = "{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}{{ messages[0]['content'] }}"
    chat = ChatLlamaCpp(model_path=sys.argv[1], chat_template=slow, max_tokens=2, verbose=False)
    threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    start = time.monotonic()
    try:
        chat.invoke("hi")
        print("NOT INTERRUPTED")
    except KeyboardInterrupt:
        print("OK", round(time.monotonic() - start, 2))
    """
)


def test_ctrl_c_during_a_slow_render(tiny_model_path: str) -> None:
    done = subprocess.run([sys.executable, "-c", CTRL_C, tiny_model_path], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("OK"), done.stdout + done.stderr
    assert float(done.stdout.split()[1]) < 3.0 * timing.SCALE
    assert done.stderr == ""


# -- grammars ---------------------------------------------------------------------------------


def test_real_grammars_are_inside_the_limits(tiny_model_path: str) -> None:
    model = LlamaCpp(model_path=tiny_model_path, verbose=False).load().model
    assert GRAMMARS
    for path in GRAMMARS:
        assert native.grammar_error(model, path.read_text()) == "", path.name


@pytest.mark.parametrize(
    ("grammar", "match"),
    [
        ("root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000, "nests groups more than 100 deep"),
        ('root ::= ("a"{1000}){1000}{1000}', "expands to more than"),
        ('root ::= "a"{1000000000000}', "expands to more than"),
        ("\n".join(f'r{i} ::= "a"' for i in range(10_001)) + "\nroot ::= r0", "more than 10000 rules"),
        ("root ::= " + "x" * (5 << 20), "bytes, over the limit"),
        # Every split of a word is a parse: a dozen tokens took llama.cpp's sampler a minute.
        ("root ::= id\nid ::= [a-z] id*", "ambiguous: rule 'id' recurses"),
        ('root ::= "a" | "b" ws\nws ::= ([ \\t\\n] ws*)?', "ambiguous: rule 'ws' recurses"),
        # The same blow-up without recursion, which only the walk through the grammar finds.
        ("root ::= " + " ".join(["[a-z]*"] * 12), "ambiguous: at its start, a token spelled 'aaaaaaaaaaaa'"),
    ],
    ids=[
        "deep nesting",
        "repetition bomb",
        "huge count",
        "rule count",
        "size",
        "ambiguous",
        "ambiguous spaces",
        "splits",
    ],
)
def test_hostile_grammar_is_refused(tiny_model_path: str, grammar: str, match: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, max_tokens=2, temperature=0, verbose=False)
    with pytest.raises(ValueError, match=match):
        llm.invoke("hi", grammar=grammar)
    assert llm.invoke("hi") == _completion(tiny_model_path, "hi")  # the instance still generates


def test_real_tool_call_grammars_pass_the_ambiguity_check(tiny_model_path: str) -> None:
    # The tool-call grammars llama.cpp writes allow runs of optional whitespace, which one text may
    # split several ways: the most ambiguous of them must stay well inside the limit.
    model = LlamaCpp(model_path=tiny_model_path, verbose=False).load().model
    messages = json.dumps([{"role": "user", "content": "Weather in Paris?"}])
    checked = 0
    for path in TEMPLATES:
        try:
            templates = native.ChatTemplates(model, path.read_text())
        except ValueError:
            continue  # a template llama.cpp cannot load: test_real_templates covers those
        for choice in ("auto", "required"):
            grammar = templates.apply(messages, tools_json=json.dumps([TOOL]), tool_choice=choice).grammar
            if grammar:
                assert native.grammar_error(model, grammar) == "", f"{path.name} {choice}"
                checked += 1
    assert checked > 50


def test_ambiguity_check_is_quick_and_remembered(tiny_model_path: str) -> None:
    """The costliest check, the walk through the grammar that finds ambiguity without recursion, takes
    ~0.1 s here; asking again about the same grammar costs a lookup (under a microsecond), not a walk."""
    model = LlamaCpp(model_path=tiny_model_path, verbose=False).load().model
    # The comment makes the text new to the remembered answers (test_hostile_grammar_is_refused checks it too).
    grammar = "root ::= " + " ".join(["[a-z]*"] * 12) + f"\n# {uuid.uuid4()}"
    started = time.perf_counter()
    first = native.grammar_error(model, grammar)
    took = time.perf_counter() - started
    assert first.startswith("the grammar is ambiguous")
    assert took < 2.0 * timing.SCALE
    again = []
    for _ in range(5):
        started = time.perf_counter()
        assert native.grammar_error(model, grammar) == first
        again.append(time.perf_counter() - started)
    assert min(again) < took / 100


def test_grammar_just_inside_the_limits_works(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, max_tokens=3, temperature=0, verbose=False)
    deep = "root ::= " + "(" * 99 + '"a"' + ")" * 99
    assert llm.invoke("hi", grammar=deep) == "a"


# -- JSON schemas -----------------------------------------------------------------------------


def _nested_schema(depth: int) -> dict[str, object]:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"x": schema}, "required": ["x"]}
    return schema


def test_deep_schema_is_refused_before_conversion(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="nests more than 64 levels"):
        # As text: Python's own json module cannot write a document this deep.
        native.json_schema_to_grammar('{"type":"object","properties":{"x":' * 100_000 + "{}" + "}}" * 100_000)
    chat = _chat(tiny_model_path, "")
    structured = chat.with_structured_output({"title": "Deep", **_nested_schema(100)}, method="json_schema")
    with pytest.raises(ValueError, match="nests more than 64 levels"):
        structured.invoke("hi")
    # A schema of ordinary depth converts.
    assert "root" in native.json_schema_to_grammar(json.dumps(_nested_schema(20)))
