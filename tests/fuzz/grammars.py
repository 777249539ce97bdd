"""Hostile GBNF grammars: llama.cpp's own grammars cut and mutated token by token, random grammars, and
named pathological ones."""

from __future__ import annotations

import json
import random
import re

from tests.fuzz.common import VENDOR, Case, _token_mutation

GRAMMAR_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|::=|[A-Za-z0-9_-]+|\{[^}]*\}|\s+|.', re.S)
GRAMMAR_SNIPPETS = [
    "(", ")", "|", "*", "+", "?", "{0,}", "{2,1}", "{3}", "{1,100}", "{99999999999}", "{", "}", '"', "[", "]", "\\",
    "::=", "root", "undefined-rule", '"\\x00"', '"\\xZZ"', '"\\U0010FFFF"', '"\\U00110000"', '"\\u12"', "[^]",
    "[z-a]", "[\\]-\\\\]", ".", '""', "()", "\n", "root ::= ", " | ", "\x00", "é",
]  # fmt: skip


def grammar_sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((VENDOR / "grammars").glob("*.gbnf"))}


def random_grammar(rng: random.Random) -> str:
    """A small random GBNF grammar: rules that reference each other (and themselves), every operator."""
    names = ["root"] + [f"r{i}" for i in range(rng.randint(0, 6))]

    def expr(depth: int) -> str:
        alts = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            items = []
            for _ in range(rng.randint(1, 4)):
                kind = rng.random()
                if kind < 0.3:
                    item = json.dumps(rng.choice(["a", "bc", "", "\n", "é", "{", "\\"]))
                elif kind < 0.45:
                    item = rng.choice(["[a-z]", "[^a]", "[0-9]+", ".", "[\\x00-\\x7f]", "[é-ü]"])
                elif kind < 0.75:
                    item = rng.choice(names)
                elif depth < 3:
                    item = f"({expr(depth + 1)})"
                else:
                    item = '"x"'
                items.append(item + rng.choice(["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}"]))
            alts.append(" ".join(items))
        return " | ".join(alts)

    return "\n".join(f"{name} ::= {expr(0)}" for name in names) + "\n"


def grammar_cases(rng: random.Random, n: int) -> list[Case]:
    sources = grammar_sources()
    tokenized = {name: GRAMMAR_TOKEN.findall(text) for name, text in sources.items()}
    pool = GRAMMAR_SNIPPETS + sorted({t for ts in tokenized.values() for t in ts if t.strip() and len(t) < 40})
    cases = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            text = random_grammar(rng)
            desc = "random"
        elif r < 0.4:
            name, text = rng.choice(sorted(sources.items()))
            cut = rng.randrange(len(text))
            text, desc = text[:cut], f"{name}[:{cut}]"
        else:
            name = rng.choice(sorted(tokenized))
            tokens, descs = tokenized[name], []
            for _ in range(rng.choice([1, 1, 2, 4])):
                tokens, d = _token_mutation(rng, tokens, pool)
                descs.append(d)
            text, desc = "".join(tokens), f"{name}: " + "; ".join(descs)
        cases.append({"kind": "grammar", "desc": desc, "text": text, "generate": rng.random() < 0.3})
    return cases


def pathological_grammars() -> dict[str, str]:
    def nested(n: int) -> str:
        return "root ::= " + "(" * n + '"a"' + ")" * n + "\n"

    chain = "".join(f"r{i} ::= r{i + 1}\n" for i in range(100_000))
    return {
        "nested groups 10k": nested(10_000),
        "nested groups 100k": nested(100_000),
        "nested repetitions 10k": "root ::= " + "(" * 10_000 + '"a"' + ")*" * 10_000 + "\n",
        "100k rules": "root ::= r0\n"
        + "".join(f'r{i} ::= r{i + 1} | "a"\n' for i in range(100_000))
        + 'r100000 ::= "b"\n',
        "100k-rule reference chain": "root ::= r0\n" + chain + 'r100000 ::= "a"\n',
        "alternation of 100k": "root ::= " + " | ".join(f'"w{i}"' for i in range(100_000)) + "\n",
        "sequence of 100k": "root ::= " + " ".join('"a"' for _ in range(100_000)) + "\n",
        "literal of 1 MB": 'root ::= "' + "a" * (1 << 20) + '"\n',
        "char class of 100k ranges": "root ::= ["
        + "".join(f"{chr(0x4E00 + i % 20_000)}-{chr(0x4E00 + i % 20_000)}" for i in range(100_000))
        + "]\n",
        "left recursion": 'root ::= root "a" | "b"\n',
        "indirect left recursion": 'root ::= a\na ::= b "x"\nb ::= root | "y"\n',
        "empty-matching left recursion": 'root ::= e root "a" | "b"\ne ::= "" | "c"?\n',
        "undefined rule": "root ::= foo\n",
        "no root": 'start ::= "a"\n',
        "empty": "",
        "empty root": "root ::=\n",
        "repeat empty string": 'root ::= ("")*\n',
        "nested empty repetitions": 'root ::= ((""*)*)*\n',
        "repeat {0,1000000}": 'root ::= "a"{0,1000000}\n',
        "repeat {4294967295}": 'root ::= "a"{4294967295}\n',
        "repeat {18446744073709551616}": 'root ::= "a"{18446744073709551616}\n',
        "repeat {2,1}": 'root ::= "a"{2,1}\n',
        # Found by the randomized test: left recursion behind rules that match nothing goes undetected.
        "left recursion behind nullable rules": 'root ::= r2\nr1 ::= "a"?\nr2 ::= r1 r1 (r2 r2)?\n',
        # Found by the randomized test (c.gbnf, two tokens swapped): every split of a word is a parse, and
        # llama.cpp's sampler keeps a stack for each.
        "ambiguous recursion": "root ::= id\nid ::= [a-z] id*\n",
        "nested repeats {1000}{1000}": 'root ::= ("a"{1000}){1000}\n',
        "unterminated literal": 'root ::= "abc',
        "unterminated class": "root ::= [a-",
        "unterminated group": 'root ::= ("a"',
        "lone backslash": 'root ::= "\\',
        "bad escapes": 'root ::= "\\xZZ" "\\u12" "\\U00110000"\n',
        "nul byte": 'root ::= "a\x00b"\n',
        "token references": "root ::= <[999999999]> !<[-1]> <|unknown|>\n",
    }
