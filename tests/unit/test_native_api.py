"""The public low-level module, `langchain_llamacpp.native`, as its docstring shows it."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
from pathlib import Path

import pytest

import langchain_llamacpp
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


def test_public_names_are_pinned() -> None:
    assert native.__all__ == [
        "LLAMA_CPP_BUILD",
        "ChatParser",
        "ChatTemplates",
        "Chunk",
        "Engine",
        "EngineParams",
        "GrammarTrigger",
        "MediaPrompt",
        "Model",
        "ModelParams",
        "Request",
        "RequestParams",
        "SamplingParams",
        "TopLogprob",
        "check_chat_template",
        "create_engine",
        "gpu_available",
        "grammar_error",
        "json_schema_to_grammar",
        "load_model",
        "rpc_available",
        "system_info",
    ]


def _stub_declarations() -> dict[str, ast.stmt]:
    """The top-level declarations of the typed stubs installed beside the extension (as a wheel has them)."""
    spec = importlib.util.find_spec("langchain_llamacpp._native")
    assert spec is not None and spec.origin is not None
    stub = Path(spec.origin).with_name("_native.pyi")
    assert stub.is_file(), f"no stubs beside the extension: {stub}"
    declared: dict[str, ast.stmt] = {}
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
            declared[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared[node.target.id] = node
    return declared


def _own_docstring(name: str, obj: object) -> str:
    """The docstring without the signature line nanobind puts first on a function's."""
    doc = inspect.getdoc(obj) or ""
    if doc.startswith(f"{name}("):
        doc = doc.partition("\n")[2]
    return doc.strip()


def test_every_public_name_is_typed_and_documented() -> None:
    declared = _stub_declarations()
    assert (Path(langchain_llamacpp.__file__).parent / "py.typed").is_file()
    for name in native.__all__:
        obj = getattr(native, name)
        if inspect.isclass(obj):
            # Classes from the extension: declared, with their fields' types, in the stubs.
            assert isinstance(declared.get(name), ast.ClassDef), f"{name} is not a class of the stubs"
        elif callable(obj):
            assert _own_docstring(name, obj), f"{name} has no docstring"
            if getattr(obj, "__module__", None) == "langchain_llamacpp.native":
                assert "return" in inspect.get_annotations(obj), f"{name} has no return type"
            else:
                assert isinstance(declared.get(name), ast.FunctionDef), f"{name} is not a function of the stubs"
        else:
            assert isinstance(declared.get(name), ast.AnnAssign), f"{name} is not a typed constant of the stubs"
            assert f"`{name}`" in (native.__doc__ or ""), f"the module docstring does not mention {name}"
    # Everything the module's docstring names as part of it is exported.
    named = {word for word in re.findall(r"`([A-Za-z]\w*)`", native.__doc__ or "") if hasattr(native, word)}
    assert named <= set(native.__all__)
