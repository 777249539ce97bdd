"""A bounded check of a JSON value against the subset of JSON Schema that tool parameters use.

Tools' schemas come from `convert_to_openai_tool` (pydantic models, typed functions, OpenAI dicts): `type`,
`properties`, `required`, `additionalProperties`, `items`, `enum`, `const`, `anyOf`/`oneOf`/`allOf` and
local `$ref`s. Other keywords (formats, ranges, patterns) are not checked: the check tells a tool call from
text that happens to be JSON, it does not replace the tool's own validation. The value comes from model
output, so the work is bounded (nesting depth, and steps for schemas with many alternatives).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MAX_DEPTH = 32  # levels of value and schema nesting followed
MAX_STEPS = 20_000  # (value, schema) pairs checked per call

_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


class _Walk:
    """One check: the root schema (for `$ref`s) and the steps taken."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.steps = 0


def schema_error(value: Any, schema: Any) -> str | None:
    """Why `value` does not match `schema`, or None when it does (within the subset above)."""
    return _check(value, schema, "$", 0, _Walk(schema))


def _check(value: Any, schema: Any, path: str, depth: int, walk: _Walk) -> str | None:
    walk.steps += 1
    if depth > MAX_DEPTH or walk.steps > MAX_STEPS:
        return f"{path}: too deep or too many alternatives to check"
    if schema is False:
        return f"{path}: no value is allowed here"
    if not isinstance(schema, dict):
        return None  # `true`, or not a schema: anything goes
    ref = schema.get("$ref")
    target = _resolve(ref, walk.root) if isinstance(ref, str) else None
    if target is not None:
        error = _check(value, target, path, depth + 1, walk)
        if error:
            return error
    for check in (_check_type, _check_enum, _check_object, _check_array, _check_combinators):
        error = check(value, schema, path, depth, walk)
        if error:
            return error
    return None


def _resolve(ref: str, root: Any) -> Any:
    """The schema a local reference (``#/$defs/Name``, ``#``) points at; None for any other."""
    if ref != "#" and not ref.startswith("#/"):
        return None
    node = root
    for part in ref[2:].split("/") if ref != "#" else []:
        if not isinstance(node, dict):
            return None
        node = node.get(part.replace("~1", "/").replace("~0", "~"))
    return node


def _check_type(value: Any, schema: dict[str, Any], path: str, depth: int, walk: _Walk) -> str | None:
    kind = schema.get("type")
    kinds = kind if isinstance(kind, list) else [kind] if isinstance(kind, str) else []
    known = [k for k in kinds if k in _TYPES]
    if known and not any(_TYPES[k](value) for k in known):
        return f"{path}: expected {' or '.join(known)}, got {type(value).__name__}"
    return None


def _check_enum(value: Any, schema: dict[str, Any], path: str, depth: int, walk: _Walk) -> str | None:
    allowed = schema.get("enum")
    if isinstance(allowed, list) and not any(_same(value, a) for a in allowed):
        return f"{path}: {value!r} is not one of {allowed!r}"
    if "const" in schema and not _same(value, schema["const"]):
        return f"{path}: expected {schema['const']!r}"
    return None


def _check_object(value: Any, schema: dict[str, Any], path: str, depth: int, walk: _Walk) -> str | None:
    if not isinstance(value, dict):
        return None
    required = schema.get("required")
    for name in required if isinstance(required, list) else []:
        if name not in value:
            return f"{path}: missing required property {name!r}"
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        sub = properties.get(name, extra)
        if sub is False:
            return f"{path}: unexpected property {name!r}"
        error = _check(item, sub, f"{path}.{name}", depth + 1, walk)
        if error:
            return error
    return None


def _check_array(value: Any, schema: dict[str, Any], path: str, depth: int, walk: _Walk) -> str | None:
    items = schema.get("items")
    if not isinstance(value, list) or not isinstance(items, dict):
        return None
    for i, item in enumerate(value):
        error = _check(item, items, f"{path}[{i}]", depth + 1, walk)
        if error:
            return error
    return None


def _check_combinators(value: Any, schema: dict[str, Any], path: str, depth: int, walk: _Walk) -> str | None:
    for key in ("allOf", "anyOf", "oneOf"):
        options = schema.get(key)
        if not isinstance(options, list) or not options:
            continue
        errors = [_check(value, option, path, depth + 1, walk) for option in options]
        matches = errors.count(None)
        if key == "allOf" and matches < len(options):
            return next(e for e in errors if e)
        if key == "anyOf" and not matches:
            return f"{path}: matches none of anyOf ({errors[0]})"
        if key == "oneOf" and matches != 1:
            return f"{path}: matches {matches} of oneOf, not exactly one"
    return None


def _same(a: Any, b: Any) -> bool:
    """JSON equality: 1 == 1.0, but True is not 1."""
    if _TYPES["number"](a) and _TYPES["number"](b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)
