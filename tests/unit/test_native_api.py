"""The public low-level module, `langchain_llamacpp.native`, as its docstring shows it."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
import struct
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
        "MAX_DRAFT_TOKENS",
        "MAX_MEDIA_BYTES",
        "MAX_SEQUENCES",
        "ChatParser",
        "ChatTemplates",
        "Chunk",
        "Engine",
        "EngineParams",
        "EngineStats",
        "GrammarTrigger",
        "MediaPrompt",
        "Model",
        "ModelParams",
        "RenderResult",
        "Request",
        "RequestParams",
        "SamplingParams",
        "TopLogprob",
        "Usage",
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


def _filled_render_result() -> native.RenderResult:
    """A RenderResult with every field set away from its default."""
    result = native.RenderResult()
    trigger = native.GrammarTrigger()
    trigger.type, trigger.value, trigger.token = 2, "<tool_call>", 151657
    for name in native.RenderResult.FIELDS:
        default = getattr(result, name)
        value: object
        if isinstance(default, bool):
            value = True
        elif isinstance(default, int):
            value = 7
        elif isinstance(default, str):
            value = f"{name}: \u00e9\x00\n"
        elif name == "grammar_triggers":
            value = [trigger, trigger]
        else:
            value = [f"{name} 1", "", f"{name} 3"]
        setattr(result, name, value)
    return result


def _plain(result: native.RenderResult) -> dict[str, object]:
    def plain(value: object) -> object:
        if isinstance(value, list):
            return [plain(item) for item in value]
        if isinstance(value, native.GrammarTrigger):
            return (value.type, value.value, value.token)
        return value

    return {name: plain(getattr(result, name)) for name in native.RenderResult.FIELDS}


def test_render_result_round_trips_every_field() -> None:
    # The template worker sends RenderResult.encode() and ChatLlamaCpp reads it with decode(): one encoding by
    # field name, made from the same table as the struct and its binding, so a field cannot be left behind.
    bound = {name for name in dir(native.RenderResult) if not name.startswith("_")} - {"FIELDS", "encode", "decode"}
    assert bound == set(native.RenderResult.FIELDS)
    result = _filled_render_result()
    blank = _plain(native.RenderResult())
    assert [name for name, value in _plain(result).items() if value == blank[name]] == []  # every field set
    again = native.RenderResult.decode(result.encode())
    assert _plain(again) == _plain(result)
    assert again == result and again != native.RenderResult()


def test_counters_list_their_fields() -> None:
    # Usage and EngineStats are made from one table each; FIELDS lists them all for readers that take every one.
    for cls in (native.Usage, native.EngineStats):
        assert {name for name in dir(cls) if not name.startswith("_")} - {"FIELDS"} == set(cls.FIELDS), cls


def _unpack(data: bytes) -> list[bytes]:
    (count,), pos, items = struct.unpack_from("<I", data), 4, []
    for _ in range(count):
        (size,) = struct.unpack_from("<I", data, pos)
        items.append(data[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return items


def _pack(items: list[bytes]) -> bytes:
    return struct.pack("<I", len(items)) + b"".join(struct.pack("<I", len(item)) + item for item in items)


def test_render_result_decode_names_a_missing_unknown_or_malformed_field() -> None:
    items = _unpack(native.RenderResult().encode())
    assert [item.decode() for item in items[::2]] == list(native.RenderResult.FIELDS)
    for i in range(0, len(items), 2):
        with pytest.raises(ValueError, match=f"lacks its field {items[i].decode()}$"):
            native.RenderResult.decode(_pack([*items[:i], *items[i + 2 :]]))
    with pytest.raises(ValueError, match="does not know: future_field"):
        native.RenderResult.decode(_pack([*items, b"future_field", b"1"]))
    at = items.index(b"format") + 1
    with pytest.raises(ValueError, match="field format is malformed"):
        native.RenderResult.decode(_pack([*items[:at], b"x", *items[at + 1 :]]))
    with pytest.raises(ValueError, match="malformed render result"):
        native.RenderResult.decode(b"\x01")


def test_limits_are_the_engines(tiny_model_path: str) -> None:
    # The classes' ranges are the native limits, read from the module: one number, enforced natively.
    model = native.load_model(tiny_model_path)
    params = native.EngineParams()
    params.n_seq = native.MAX_SEQUENCES + 1
    with pytest.raises(ValueError, match=f"n_seq must be between 1 and {native.MAX_SEQUENCES}"):
        native.Engine.create(model, params)
    with pytest.raises(ValueError, match=f"less than or equal to {native.MAX_SEQUENCES}"):
        LlamaCpp(model_path=tiny_model_path, n_seq=native.MAX_SEQUENCES + 1)
    with pytest.raises(ValueError, match=f"less than or equal to {native.MAX_DRAFT_TOKENS}"):
        LlamaCpp(model_path=tiny_model_path, draft_max=native.MAX_DRAFT_TOKENS + 1)
