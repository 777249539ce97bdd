"""Every field explains itself to tools: a description in `model_fields`, in the JSON schema and in `help()`."""

from __future__ import annotations

import pydoc

import pytest
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings

CLASSES = (LlamaCpp, ChatLlamaCpp, LlamaCppEmbeddings)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_field_has_a_description(cls: type[BaseModel]) -> None:
    # Fields inherited from LangChain's classes count too: a user sees them all alike.
    undocumented = [name for name, info in cls.model_fields.items() if not (info.description or "").strip()]
    assert not undocumented, f"{cls.__name__} fields without a docstring under them: {undocumented}"


def test_descriptions_are_the_docstrings() -> None:
    assert LlamaCpp.model_fields["n_ctx"].description == (
        "Context window per request (prompt plus completion). None: the model's trained length,\n"
        "capped at 4096; 0: the full trained length."
    )
    assert LlamaCppEmbeddings.model_fields["truncate"].description is not None
    assert "ChatOllama" in (ChatLlamaCpp.model_fields["reasoning"].description or "")
    # Inherited from LangChain, with LangChain's own text.
    assert ChatLlamaCpp.model_fields["callbacks"].description == "Callbacks to add to the run trace."


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_json_schema_describes_every_field(cls: type[BaseModel]) -> None:
    properties = cls.model_json_schema()["properties"]
    for name, info in cls.model_fields.items():
        if name in properties:
            assert properties[name].get("description") == info.description, name
    # Only LangChain's fields that have no JSON form (a callable, a rate limiter object) are left out.
    assert set(cls.model_fields) - set(properties) <= {"custom_get_token_ids", "rate_limiter"}


def test_help_shows_the_fields() -> None:
    text = pydoc.render_doc(ChatLlamaCpp, renderer=pydoc.plaintext)
    assert "n_ctx:" in text and "the model's trained length" in text
    assert "reasoning:" in text and "mmproj_path:" in text
    assert "Instantiate:" in text  # the class's own docstring is kept, the fields come after it
