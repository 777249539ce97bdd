"""The public low-level module, `langchain_llamacpp.native`, as its docstring shows it."""

from __future__ import annotations

import math

import pytest

from langchain_llamacpp import LlamaCpp, native


def test_docstring_example(tiny_model_path: str) -> None:
    model = native.load_model(tiny_model_path)
    engine = native.create_engine(model, n_ctx=256, n_seq=2)
    tokens = model.tokenize("The capital of France is", add_special=True)
    logits = engine.evaluate(0, tokens)[-1]
    assert len(logits) == model.n_vocab and all(math.isfinite(x) for x in logits)
    engine.kv_copy(0, 1)
    assert engine.slot_tokens(1) == tokens
    engine.kv_remove(0, 0)
    assert engine.slot_tokens(0) == []

    request = native.RequestParams()
    request.prompt = tokens
    request.max_tokens = 8
    request.sampling.temperature = 0.0
    text = "".join(chunk.text for chunk in engine.submit(request).wait())
    # The same model and settings as a LangChain class: the same answer.
    llm = LlamaCpp(model_path=tiny_model_path, n_ctx=256, temperature=0, max_tokens=8, verbose=False)
    assert llm.invoke("The capital of France is") == text


def test_models_and_engines_are_shared_with_the_classes(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, n_ctx=128, n_seq=3, verbose=False)
    model = native.load_model(tiny_model_path)
    assert native.create_engine(model, n_ctx=128, n_seq=3) is llm.load()
    assert model.params.path == model.path


def test_unknown_settings_and_missing_files(tiny_model_path: str, tmp_path: object) -> None:
    with pytest.raises(FileNotFoundError, match="model file not found"):
        native.load_model("/nonexistent/model.gguf")
    with pytest.raises(TypeError, match="unknown model settings"):
        native.load_model(tiny_model_path, n_layers=3)
    with pytest.raises(TypeError, match="unknown engine settings"):
        native.create_engine(native.load_model(tiny_model_path), context=128)


def test_everything_exported_exists() -> None:
    for name in native.__all__:
        assert getattr(native, name) is not None
