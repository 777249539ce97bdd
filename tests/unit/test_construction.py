"""What construction checks (README: "the file is always checked"): every path field names a GGUF file, and
ChatOllama's `model=` habit is taken, or refused with what to pass instead."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings, LlamaCppReranker

# (class, field) for every field that names a file; the other fields needed to construct.
PATH_FIELDS = [
    (LlamaCpp, "model_path"),
    (LlamaCpp, "lora_path"),
    (LlamaCpp, "draft_model_path"),
    (ChatLlamaCpp, "model_path"),
    (ChatLlamaCpp, "mmproj_path"),
    (LlamaCppEmbeddings, "model_path"),
    (LlamaCppReranker, "model_path"),
]


MODEL_CLASSES = [LlamaCpp, ChatLlamaCpp, LlamaCppEmbeddings, LlamaCppReranker]


def _build(cls: type, field: str, value: str, model: str) -> Any:
    return cls(**{"model_path": model, field: value})


@pytest.mark.parametrize(("cls", "field"), PATH_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_directory_refused_at_construction(cls: type, field: str, tmp_path: Path, tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match=rf"{field} is a directory, not a GGUF file: {tmp_path}"):
        _build(cls, field, str(tmp_path), tiny_model_path)


@pytest.mark.parametrize(("cls", "field"), PATH_FIELDS, ids=lambda x: getattr(x, "__name__", x))
def test_non_gguf_file_refused_at_construction(cls: type, field: str, tmp_path: Path, tiny_model_path: str) -> None:
    for name, data in (("notes.gguf", b"this is not a model"), ("empty.gguf", b""), ("ggu.gguf", b"GGU")):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(ValueError, match=rf"{field}: .* is not a GGUF file \(.*'GGUF'\): {bad}"):
            _build(cls, field, str(bad), tiny_model_path)


def test_gguf_magic_is_enough_at_construction(tmp_path: Path) -> None:
    # Only the magic is read at construction; the rest of the file is the loader's to judge, at load.
    header_only = tmp_path / "header-only.gguf"
    header_only.write_bytes(b"GGUF" + bytes(60))
    llm = LlamaCpp(model_path=str(header_only))
    with pytest.raises(ValueError, match="GGUF"):
        llm.invoke("hi")


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_model_naming_a_file_is_the_model_path(cls: type, tiny_model_path: str) -> None:
    assert cls(model=tiny_model_path).model_path == tiny_model_path
    assert cls(model=Path(tiny_model_path)).model_path == tiny_model_path


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda c: c.__name__)
def test_model_naming_no_file_is_refused_with_what_to_pass(cls: type, tmp_path: Path) -> None:
    for model in ("llama3.1:8b", str(tmp_path / "missing.gguf"), str(tmp_path)):
        with pytest.raises(ValueError, match=r"is not the path of a file: .* model_path='/path/to/model\.gguf'"):
            cls(model=model)


def test_model_and_model_path_together_refused(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="give model_path only"):
        ChatLlamaCpp(model=tiny_model_path, model_path=tiny_model_path)


def test_model_gives_no_model_kwargs_warning(tiny_model_path: str, recwarn: pytest.WarningsRecorder) -> None:
    # Before: "'model' is not a field ...; passing it to llama.cpp through model_kwargs", then a failure
    # on the missing model_path.
    chat = ChatLlamaCpp(model=tiny_model_path)
    assert chat.model_kwargs == {}
    assert not [w for w in recwarn if "model_kwargs" in str(w.message)]
