"""Text sent to llama.cpp: a Python str that has no UTF-8 form becomes a ValueError naming the text.

A Python str can hold lone surrogates ("\\ud800": from os.fsdecode of undecodable bytes, a JSON
escape, a truncated UTF-16 pair), which have no UTF-8 form; llama.cpp takes UTF-8 only.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

_Text = TypeVar("_Text", bound="str | None")


def valid_text(text: _Text, what: str) -> _Text:
    """`text` (or None) if llama.cpp can take it; otherwise a ValueError naming `what` and the place.

    The check costs at most one pass over the text, and none for ASCII text (`isascii` reads a flag
    of the string).
    """
    if isinstance(text, str) and not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(_surrogate_message(what, e.start)) from None
    return text


def valid_texts(texts: list[str], what: str) -> list[str]:
    """Each of `texts` checked by `valid_text` ("stop[1] contains ...")."""
    for i, text in enumerate(texts):
        valid_text(text, f"{what}[{i}]")
    return texts


def json_text(value: Any, what: str) -> str:
    """`value` as JSON for llama.cpp, which must be valid Unicode; an error names the string at fault."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        return valid_text(text, what)
    except ValueError:
        found = _find_surrogate(value, what)
        if found is None:
            raise
        raise ValueError(_surrogate_message(*found)) from None


def _find_surrogate(value: Any, where: str) -> tuple[str, int] | None:
    """The first string in a JSON-like value that is not valid Unicode: its path and the index."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return where, e.start
        return None
    items: Any = ()
    if isinstance(value, dict):
        for key in value:
            found = _find_surrogate(key, f"a key in {where}")
            if found is not None:
                return found
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    for key, item in items:
        found = _find_surrogate(item, f"{where}[{key!r}]")
        if found is not None:
            return found
    return None


def _surrogate_message(what: str, index: int) -> str:
    return f"{what} contains a lone surrogate at index {index}; text must be valid Unicode"
