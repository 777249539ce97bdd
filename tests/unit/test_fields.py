"""Every field explains itself to tools: a description in `model_fields`, in the JSON schema and in `help()`;
`reasoning` is the one field for thinking (`enable_thinking` is deprecated)."""

from __future__ import annotations

import pydoc
import warnings

import pytest
from langchain_core._api import LangChainDeprecationWarning
from pydantic import BaseModel

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings, LlamaCppReranker
from tests.tiny_model import CHATML

CLASSES = (LlamaCpp, ChatLlamaCpp, LlamaCppEmbeddings, LlamaCppReranker)


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


def test_enable_thinking_is_deprecated_for_reasoning(tiny_model_path: str) -> None:
    with pytest.warns(LangChainDeprecationWarning, match=r"reasoning=False"):
        chat = ChatLlamaCpp(model_path=tiny_model_path, enable_thinking=False)
    assert chat.reasoning is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", LangChainDeprecationWarning)
        ChatLlamaCpp(model_path=tiny_model_path, reasoning=False)  # the new spelling: no warning
    with pytest.raises(ValueError, match="enable_thinking=False"), pytest.warns(LangChainDeprecationWarning):
        ChatLlamaCpp(model_path=tiny_model_path, enable_thinking=False, reasoning=True)


def _rendered_prompt(tiny_model_path: str, **fields: object) -> str:
    """The prompt a chat model renders for "hi", as the engine cached it."""
    template = "{% if not enable_thinking %}THINKING-OFF {% endif %}" + CHATML
    chat = ChatLlamaCpp(model_path=tiny_model_path, chat_template=template, n_seq=1, max_tokens=1, **fields)
    engine = chat.load()
    engine.clear_cache()
    chat.invoke("hi")
    return str(engine.model.detokenize(engine.slot_tokens(0), True))


def test_enable_thinking_false_still_turns_thinking_off(tiny_model_path: str) -> None:
    assert "THINKING-OFF" not in _rendered_prompt(tiny_model_path)
    assert "THINKING-OFF" in _rendered_prompt(tiny_model_path, reasoning=False)
    with pytest.warns(LangChainDeprecationWarning):
        assert "THINKING-OFF" in _rendered_prompt(tiny_model_path, enable_thinking=False)


def test_reasoning_true_without_thinking_in_the_template_warns_once(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, max_tokens=1, reasoning=True)  # ChatML: no thinking
    with pytest.warns(UserWarning, match=r"reasoning=True has no effect") as caught:
        chat.invoke("hi")
        chat.invoke("hi again")
    assert len([w for w in caught if "reasoning=True" in str(w.message)]) == 1
    plain = ChatLlamaCpp(model_path=tiny_model_path, max_tokens=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain.invoke("hi")  # reasoning not asked for: nothing to say
