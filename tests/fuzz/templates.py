"""Hostile chat templates: llama.cpp's own templates cut and mutated token by token, and named pathological
ones; the conversation they render."""

from __future__ import annotations

import random
import re
from typing import Any

from tests.fuzz.common import VENDOR, Case, _token_mutation

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "user", "content": "Thanks"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TEMPLATE_TOKEN = re.compile(r"\{%-?|-?%\}|\{\{-?|-?\}\}|\{#|#\}|\s+|\w+|.", re.S)
TEMPLATE_SNIPPETS = [
    "{{", "}}", "{%", "%}", "{% endfor %}", "{% endif %}", "{% else %}", "{% if %}", "{{ messages[1000] }}",
    "{{ raise_exception('x') }}", "{{ x.y.z }}", "{{ 1/0 }}", "{{ 1 % 0 }}", "{{ none.attr }}",
    "{{ loop.index }}", "{{ tools|tojson }}", "{{ (messages|length) * 'ab' }}", "{% set ns = namespace() %}",
    "{{ messages|selectattr('role')|list }}", "{{ messages[0]['content'][::-1] }}", "{{ messages|map(attribute='x') }}",
    "{{ 'a'|indent(3) }}", "{{ '%d'|format('x') }}", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m() }}", "|", "(",
    ")", "[", "]", "'", '"', "~", ".", "[-1]", "[1:-1]", "not", "in", "is", "defined", "none", "{#", "#}",
    "{%- generation -%}", "{% break %}", "{% continue %}", "{{ strftime_now('%Y') }}", "{{ range(5)|list }}",
]  # fmt: skip


def template_sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((VENDOR / "models" / "templates").glob("*.jinja"))}


def _render_options(rng: random.Random) -> dict[str, Any]:
    return {
        "messages": rng.choice(["full", "full", "user"]),
        "tools": rng.random() < 0.4,
        "add_generation_prompt": rng.random() < 0.8,
        "enable_thinking": rng.random() < 0.5,
    }


def template_prefix_cases(rng: random.Random, per_template: int) -> list[Case]:
    cases = []
    for name, text in template_sources().items():
        cuts = sorted(rng.sample(range(1, len(text) + 1), min(per_template, len(text))))
        for cut in cuts:
            # Most in this process (microseconds each), a few the whole way (ChatLlamaCpp, its render process).
            via = "chat" if rng.random() < 0.03 else "native"
            desc = f"{name}[:{cut}] ({via})"
            cases.append({"kind": "template", "desc": desc, "text": text[:cut], "via": via, **_render_options(rng)})
    return cases


def template_mutation_cases(rng: random.Random, n: int) -> list[Case]:
    sources = template_sources()
    tokenized = {name: TEMPLATE_TOKEN.findall(text) for name, text in sources.items()}
    words = sorted({t for ts in tokenized.values() for t in ts if t.strip() and len(t) < 30})
    pool = TEMPLATE_SNIPPETS + words
    cases = []
    for _ in range(n):
        name = rng.choice(sorted(sources))
        tokens, descs = tokenized[name], []
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            tokens, d = _token_mutation(rng, tokens, pool)
            descs.append(d)
        via = "chat" if rng.random() < 0.05 else "native"
        cases.append(
            {
                "kind": "template",
                "desc": f"{name}: {'; '.join(descs)} ({via})",
                "text": "".join(tokens),
                "via": via,
                **_render_options(rng),
            }
        )
    return cases


def pathological_templates() -> dict[str, str]:
    doubling = (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s|length }}"
    )
    return {
        "self-calling macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "mutually recursive macros": (
            "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}"
        ),
        "recursive loop over a cycle": (
            "{% set l = [] %}{% set _ = l.append(l) %}{% for x in l recursive %}{{ loop(x) }}{% endfor %}"
        ),
        "5000 nested parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "100k nested parentheses": "{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}",
        "10k nested lists": "{{ " + "[" * 10_000 + "]" * 10_000 + " }}",
        "10k nested ifs": "{% if true %}" * 10_000 + "x" + "{% endif %}" * 10_000,
        "10k nested fors": "{% for x in [1] %}" * 10_000 + "x" + "{% endfor %}" * 10_000,
        "100k not": "{{ " + "not " * 100_000 + "true }}",
        "100k unary minus": "{{ " + "-" * 100_000 + "1 }}",
        "100k filters": "{{ 'a'" + "|upper" * 100_000 + " }}",
        "100k subscripts": "{{ messages" + "[0]" * 100_000 + " }}",
        "range(1e10)": "{% for i in range(10000000000) %}{% endfor %}",
        "nested ranges 1e5 x 1e5": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "range(1e10)|list": "{{ range(10000000000)|list|length }}",
        "'a' * 1e10": "{{ 'a' * 10000000000 }}",
        "[1] * 1e10": "{{ [1] * 10000000000 }}",
        "string doubling 64 times": doubling,
        "replace blow-up": "{{ ('a' * 100000)|replace('', 'a' * 100000) }}",
        "indent 1e10": "{{ 'a\nb'|indent(10000000000) }}",
        "tojson indent 1e9": "{{ messages|tojson(indent=1000000000) }}",
        "format width 1e9": "{{ '%1000000000d'|format(1) }}",
        "strftime 1 MB format": "{{ strftime_now('%Y' * 500000) }}",
        "cyclic list tojson": "{% set x = [] %}{% set _ = x.append(x) %}{{ x|tojson }}",
        "cyclic dict tojson": "{% set d = {} %}{% set _ = d.update({'d': d}) %}{{ d|tojson }}",
        "INT64_MIN / -1": "{{ (-9223372036854775807 - 1) / -1 }}",
        "INT64_MIN % -1": "{{ (-9223372036854775807 - 1) % -1 }}",
        "int overflow": "{{ 9223372036854775807 + 1 }}{{ 9223372036854775807 * 9223372036854775807 }}",
        "int literal beyond int64": "{{ 99999999999999999999999999 }}",
        "division by zero": "{{ 1 % 0 }}{{ 1 / 0 }}",
        "include": "{% include 'etc/passwd' %}",
        "extends": "{% extends 'base.html' %}",
        "raise_exception": "{{ raise_exception('boom') }}",
        "nul byte": "a\x00b{{ 'c\x00' }}",
        "10 MB of text": "a" * (10 << 20),
    }


def pathological_template_cases() -> dict[str, Case]:
    # The whole public way: ChatLlamaCpp(chat_template=...).invoke, conversation with tools bound.
    return {
        name: {"kind": "template", "desc": name, "text": text, "via": "chat", "messages": "full", "tools": True}
        for name, text in pathological_templates().items()
    }
