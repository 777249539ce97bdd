"""Field descriptions for tools: each field's docstring as its pydantic `description`.

The docstring under a field is its documentation. pydantic's ``use_attribute_docstrings`` copies it
into the field's `description`, which JSON schemas, IDEs and LangChain's API reference read; but
only for the class being defined, so the fields inherited from LangChain's classes (`callbacks`,
`tags`, `cache`, ...) would stay without one. `DocumentedFields` fills those from the class that
declares them, and lists every field in the class's docstring, which is what ``help()`` shows
(pydantic's fields are not class attributes, so ``help()`` shows none of them otherwise).
"""

from __future__ import annotations

import ast
import copy
import functools
import inspect
import itertools
import linecache
import re
import textwrap
from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import PydanticOmit

# Where a class already lists its fields (once per class: a subclass gets its own list).
_FIELDS_HEADING = "Fields (``model_fields``; the same text is each field's JSON-schema description):"


class DocumentedFields(BaseModel):
    """Every field described by its docstring: ours, and those of the LangChain fields inherited."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if _describe_inherited(cls):
            cls.model_rebuild(force=True)  # the schema is built from the descriptions
        _list_fields_in_docstring(cls)

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """pydantic's JSON schema of the fields; those that have no JSON form (LangChain's
        `custom_get_token_ids`, a callable; `rate_limiter`, an object) are left out instead of
        failing the whole schema."""
        if len(args) < 3:  # schema_generator is the third positional argument
            kwargs.setdefault("schema_generator", _FieldsJsonSchema)
        return super().model_json_schema(*args, **kwargs)


class _FieldsJsonSchema(GenerateJsonSchema):
    def handle_invalid_for_json_schema(self, schema: Any, error_info: str) -> JsonSchemaValue:
        raise PydanticOmit


def _describe_inherited(cls: type[BaseModel]) -> bool:
    """Give each field without a description the docstring written under it where it is declared."""
    changed = False
    for name, info in cls.model_fields.items():
        if info.description:
            continue
        declaring = next((base for base in cls.__mro__ if name in inspect.get_annotations(base)), None)
        doc = _attribute_docstrings(declaring).get(name) if declaring is not None else None
        if doc:
            described = copy.copy(info)  # a copy: the base class's own field stays as it is
            described.description = doc
            cls.__pydantic_fields__[name] = described
            changed = True
    return changed


@functools.cache
def _attribute_docstrings(cls: type) -> dict[str, str]:
    """The docstrings written under the annotated attributes of `cls`, by attribute name."""
    body = _class_body(cls)
    docs = {}
    for node, after in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _class_body(cls: type) -> list[ast.stmt]:
    """The statements of the class statement that defines `cls`, parsed from its own lines only.

    `inspect.getsource` parses the whole module to find a class: 60-80 ms for LangChain's larger modules,
    paid at every import of this package; this reads the class's lines alone.
    """
    try:
        lines = linecache.getlines(inspect.getsourcefile(cls) or "")
    except (TypeError, OSError):  # a built-in class, or one defined where there is no file (a REPL)
        return []
    start = re.compile(rf"^(\s*)class\s+{re.escape(cls.__name__)}\b")
    for i, line in enumerate(lines):
        match = start.match(line)
        if match is None:
            continue
        indent = len(match.group(1))
        end = i
        while end < len(lines) and not lines[end].split("#")[0].rstrip().endswith(":"):  # a header on many lines
            end += 1
        end += 1
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        try:
            tree = ast.parse(textwrap.dedent("".join(lines[i:end])))
        except SyntaxError:  # a multi-line string at the class's indentation: give up on this class
            return []
        node = tree.body[0] if tree.body else None
        return node.body if isinstance(node, ast.ClassDef) else []
    return []


def _list_fields_in_docstring(cls: type[BaseModel]) -> None:
    """Append the fields and their descriptions to the class's own docstring, for ``help()``."""
    doc = vars(cls).get("__doc__")
    if not doc or _FIELDS_HEADING in doc:
        return
    lines = [inspect.cleandoc(doc), "", _FIELDS_HEADING, ""]
    for name, info in cls.model_fields.items():
        lines.append(f"    {name}:")
        lines.extend(textwrap.indent(info.description or "(undocumented)", " " * 8).splitlines())
    cls.__doc__ = "\n".join(lines) + "\n"
