"""Hostile JSON schemas: random schemas, mutated ones, and named pathological ones."""

from __future__ import annotations

import json
import random
from typing import Any

from tests.fuzz.common import Case

FORMATS = ["date", "time", "date-time", "uuid", "email", "uri", "x"]
PATTERNS = ["^a+$", "[0-9]{3}-[0-9]{4}", "(ab|cd)*", "^\\d{1,3}$", "a{2,}", "[", "(", "\\", "a**", "(?=a)", "^$", ".*"]


def random_schema(rng: random.Random, depth: int = 0, defs: list[str] | None = None) -> Any:
    defs = defs or []
    if depth > 3 or rng.random() < 0.2:
        return rng.choice(
            [
                {"type": "string"},
                {
                    "type": "integer",
                    "minimum": rng.choice([-(2**63), -5, 0, 3]),
                    "maximum": rng.choice([5, 1000, 2**63]),
                },
                {"type": "number", "exclusiveMinimum": 0.5},
                {"type": "boolean"},
                {"type": "null"},
                {"const": rng.choice([1, "x", None, [1], {"a": 1}])},
                {"enum": rng.sample(["a", "b", 1, 2.5, None, True, [], {}], rng.randint(0, 5))},
                {"type": "string", "pattern": rng.choice(PATTERNS)},
                {"type": "string", "format": rng.choice(FORMATS)},
                {"type": "string", "minLength": rng.choice([0, 2, -1, 1.5]), "maxLength": rng.choice([1, 10, 0])},
                {"$ref": rng.choice([*(f"#/$defs/{d}" for d in defs), "#", "#/$defs/missing", "#/properties"])},
                {},
                True,
                False,
            ]
        )
    kind = rng.choice(["object", "array", "anyOf", "oneOf", "allOf", "tuple", "defs"])
    if kind == "object":
        props = {f"p{i}": random_schema(rng, depth + 1, defs) for i in range(rng.randint(0, 4))}
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if props and rng.random() < 0.6:
            schema["required"] = rng.sample(sorted(props), rng.randint(0, len(props))) + (
                ["nope"] if rng.random() < 0.1 else []
            )
        if rng.random() < 0.3:
            schema["additionalProperties"] = rng.choice([True, False, random_schema(rng, depth + 1, defs)])
        return schema
    if kind == "array":
        schema = {"type": "array", "items": random_schema(rng, depth + 1, defs)}
        if rng.random() < 0.5:
            schema["minItems"] = rng.choice([0, 1, 3, -1])
            schema["maxItems"] = rng.choice([0, 2, 5, 1])
        return schema
    if kind == "tuple":
        return {"type": "array", "prefixItems": [random_schema(rng, depth + 1, defs) for _ in range(rng.randint(0, 3))]}
    if kind == "defs":
        names = [f"d{depth}_{i}" for i in range(rng.randint(1, 3))]
        inner = defs + names
        return {"$defs": {n: random_schema(rng, depth + 1, inner) for n in names}, **{"$ref": f"#/$defs/{names[0]}"}}
    return {kind: [random_schema(rng, depth + 1, defs) for _ in range(rng.randint(0, 3))]}


def _mutate_json(rng: random.Random, value: Any) -> Any:
    """Replace one node of a JSON value with a wrong or extreme one."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        return {**value, key: _mutate_json(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate_json(rng, value[i]), *value[i + 1 :]]
    return rng.choice([None, -1, 2**64, 1e308, "x", "", [], {}, {"type": "wrong"}, {"$ref": "#"}, [None], True])


def schema_cases(rng: random.Random, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        schema = random_schema(rng)
        desc = "random"
        if rng.random() < 0.4:
            schema, desc = _mutate_json(rng, schema), "random, mutated"
        # Some go the whole public way (with_structured_output on a chat model), the rest to the converter.
        via = "structured" if isinstance(schema, dict) and rng.random() < 0.05 else "native"
        if via == "structured":
            schema = {"title": "Answer", **schema}  # LangChain takes a dict schema with a title only
        # Sampling under a JSON grammar costs ~0.1 s a token on the tiny model's 32k vocabulary: some cases.
        generate = rng.random() < 0.2
        cases.append(
            {"kind": "schema", "desc": f"{desc} ({via})", "text": json.dumps(schema), "via": via, "generate": generate}
        )
    return cases


def pathological_schemas() -> dict[str, str]:
    def deep(open_: str, leaf: str, close: str, n: int) -> str:
        return open_ * n + leaf + close * n

    enum = json.dumps({"enum": [f"value-{i}" for i in range(100_000)]})
    props = json.dumps({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(20_000)}})
    return {
        "nested arrays 10k": deep('{"type": "array", "items": ', "{}", "}", 10_000),
        "nested objects 10k": deep('{"type": "object", "properties": {"a": ', "{}", "}}", 10_000),
        "nested anyOf 10k": deep('{"anyOf": [', '{"type": "null"}', "]}", 10_000),
        "nested JSON 100k": deep("[", "", "]", 100_000),
        "enum of 100k": enum,
        "enum of a deep value": '{"enum": [' + deep("[", "1", "]", 10_000) + "]}",
        "20k properties, all required": props[:-1]
        + ', "required": '
        + json.dumps([f"p{i}" for i in range(20_000)])
        + "}",
        "self $ref": '{"$ref": "#"}',
        "self $ref through $defs": '{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}',
        "mutual $ref": '{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}',
        "recursive tree": '{"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}',
        "missing $ref": '{"$ref": "#/$defs/nothing"}',
        "remote $ref": '{"$ref": "https://example.invalid/schema.json"}',
        "odd $ref pointer": '{"$ref": "#/properties/~2/../items/999999999"}',
        "minItems 1e9": '{"type": "array", "items": {"type": "integer"}, "minItems": 1000000000}',
        "maxItems 1e9": '{"type": "array", "items": {"type": "integer"}, "minItems": 100000, "maxItems": 1000000000}',
        "minItems 2**64": '{"type": "array", "minItems": 18446744073709551616}',
        "minItems -1, maxItems -5": '{"type": "array", "minItems": -1, "maxItems": -5}',
        "minItems as string": '{"type": "array", "minItems": "x"}',
        "minLength > maxLength": '{"type": "string", "minLength": 2, "maxLength": 1}',
        "minItems > maxItems": '{"type": "array", "minItems": 1, "maxItems": 0}',
        "minLength 1e9": '{"type": "string", "minLength": 1000000000}',
        "maxLength 1e18": '{"type": "string", "minLength": 10, "maxLength": 1000000000000000000}',
        "integer bounds beyond int64": '{"type": "integer", "minimum": -1e300, "maximum": 1e300}',
        "integer bounds crossed": '{"type": "integer", "minimum": 10, "maximum": -10}',
        "pattern nested 10k": json.dumps({"type": "string", "pattern": "^" + "(" * 10_000 + "a" + ")" * 10_000 + "$"}),
        "pattern a{1000000}": '{"type": "string", "pattern": "^a{1000000}$"}',
        "pattern (a{1000}){1000}": '{"type": "string", "pattern": "^(a{1000}){1000}$"}',
        "pattern unbalanced": '{"type": "string", "pattern": "^(a$"}',
        "pattern trailing backslash": '{"type": "string", "pattern": "^a\\\\"}',
        "prefixItems 50k": json.dumps({"type": "array", "prefixItems": [{"type": "integer"}] * 50_000}),
        "allOf of 1000 conflicting": json.dumps({"allOf": [{"type": t} for t in ["string", "integer"] * 500]}),
        "not JSON": "{",
        "a number": "3",
    }
