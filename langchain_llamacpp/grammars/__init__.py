"""GBNF grammars bundled with the package (from llama.cpp's `grammars/`, MIT).

`LlamaCpp(grammar_path="json")` or `grammar_path=grammars.path("json")` uses them without guessing
where the package is installed.
"""

from __future__ import annotations

import os
from pathlib import Path

GRAMMARS_DIR = Path(__file__).parent


def names() -> list[str]:
    """Names of the bundled grammars ("json", "list", ...)."""
    return sorted(p.stem for p in GRAMMARS_DIR.glob("*.gbnf"))


def path(name: str) -> str:
    """Path of a bundled grammar by name, e.g. ``path("json")``."""
    candidate = GRAMMARS_DIR / f"{name.removesuffix('.gbnf')}.gbnf"
    if not candidate.is_file():
        raise FileNotFoundError(f"no bundled grammar named {name!r}; available: {', '.join(names())}")
    return str(candidate)


def read(name: str) -> str:
    """Text of a bundled grammar by name."""
    return Path(path(name)).read_text(encoding="utf-8")


def resolve_grammar_path(value: str | os.PathLike[str]) -> str:
    """A grammar file path: an existing file, or the name of a bundled grammar."""
    given = os.path.expanduser(os.fspath(value))
    if os.path.isfile(given):
        return given
    stem = Path(given).name
    if not os.path.dirname(given) or not os.path.exists(os.path.dirname(given)):
        try:
            return path(stem)
        except FileNotFoundError:
            pass
    raise FileNotFoundError(f"grammar file not found: {given} (bundled grammars: {', '.join(names())})")


__all__ = ["GRAMMARS_DIR", "names", "path", "read", "resolve_grammar_path"]
