"""Bad input raises a clear Python exception, never a crash."""

from __future__ import annotations

from pathlib import Path

import pytest

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native


def test_missing_model_file() -> None:
    with pytest.raises(FileNotFoundError, match=r"model file not found: /nonexistent/model\.gguf"):
        LlamaCpp(model_path="/nonexistent/model.gguf")


def test_missing_model_file_native() -> None:
    params = native.ModelParams()
    params.path = "/nonexistent/model.gguf"
    with pytest.raises(FileNotFoundError, match=r"/nonexistent/model\.gguf"):
        native.Model.load(params)


def test_not_a_gguf(tmp_path: Path) -> None:
    bad = tmp_path / "notes.gguf"
    bad.write_text("this is not a model")
    with pytest.raises(ValueError, match="not a GGUF file"):
        LlamaCpp(model_path=str(bad)).invoke("hi")


def test_truncated_gguf(tmp_path: Path, tiny_model_path: str) -> None:
    data = Path(tiny_model_path).read_bytes()
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="corrupt or unsupported GGUF"):
        LlamaCpp(model_path=str(bad)).invoke("hi")


def test_garbage_after_magic(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="corrupt or unsupported GGUF"):
        LlamaCpp(model_path=str(bad)).invoke("hi")


def test_directory_as_model(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="directory"):
        LlamaCpp(model_path=str(tmp_path)).invoke("hi")


def test_prompt_longer_than_context(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, n_ctx=256, max_tokens=8)
    with pytest.raises(ValueError, match=r"prompt has 1\d\d\d tokens, more than fit in the context \(n_ctx=256\)"):
        llm.invoke("hello " * 1000)


def test_prompt_plus_max_tokens_beyond_context(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, n_ctx=256, max_tokens=250)
    with pytest.raises(ValueError, match=r"plus max_tokens \(250\) exceeds the context \(n_ctx=256\)"):
        llm.invoke("hello " * 10)


def test_invalid_grammar_carries_parser_message(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, grammar='root ::= "unterminated', max_tokens=4)
    with pytest.raises(ValueError, match="invalid grammar") as info:
        llm.invoke("hi")
    assert "unexpected end of input" in str(info.value)


def test_grammar_with_undefined_rule(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, grammar="root ::= missing-rule", max_tokens=4)
    with pytest.raises(ValueError, match=r"undefined rule .missing-rule."):
        llm.invoke("hi")


def test_missing_grammar_file(tiny_model_path: str) -> None:
    with pytest.raises(FileNotFoundError, match="grammar file not found"):
        LlamaCpp(model_path=tiny_model_path, grammar_path="/nope/dir/custom.gbnf")


def test_grammar_and_grammar_path(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="either grammar or grammar_path"):
        LlamaCpp(model_path=tiny_model_path, grammar='root ::= "a"', grammar_path="json")


def test_unknown_call_option(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="unknown option"):
        LlamaCpp(model_path=tiny_model_path).invoke("hi", temprature=0.1)


def test_unknown_model_kwarg(tiny_model_path: str) -> None:
    with pytest.raises(ValueError, match="unknown model_kwargs"):
        LlamaCpp(model_path=tiny_model_path, model_kwargs={"not_a_setting": 1})


def test_bad_logit_bias_token(tiny_model_path: str) -> None:
    llm = LlamaCpp(model_path=tiny_model_path, max_tokens=2, logit_bias={10**7: 1.0})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        llm.invoke("hi")


def test_unknown_mirostat_version_native(tiny_model_path: str) -> None:
    # llama.cpp's sampler asserts on it (the process aborts); the engine refuses it first.
    model = native.load_model(tiny_model_path)
    engine = native.create_engine(model, n_ctx=64, n_seq=1)
    request = native.RequestParams()
    request.prompt = model.tokenize("hi", add_special=True)
    request.max_tokens = 2
    request.sampling.mirostat = 5
    with pytest.raises(ValueError, match="mirostat must be 0"):
        engine.submit(request)


def test_vocab_only_cannot_generate(vocab_path: str) -> None:
    llm = LlamaCpp(model_path=vocab_path, vocab_only=True)
    assert llm.get_num_tokens("Hello world") > 0
    with pytest.raises(ValueError, match="vocab_only"):
        llm.invoke("hi")


def test_unknown_tool_in_tool_choice(tiny_model_path: str) -> None:
    def get_weather(city: str) -> str:
        """Get the weather."""
        return city

    chat = ChatLlamaCpp(model_path=tiny_model_path)
    with pytest.raises(ValueError, match="unknown tool 'get_time'"):
        chat.bind_tools([get_weather], tool_choice="get_time")
    with pytest.raises(ValueError, match="unknown tool"):
        chat.bind_tools([get_weather], tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(ValueError, match="unsupported tool_choice"):
        chat.bind_tools([get_weather], tool_choice=42)  # type: ignore[arg-type]


def test_malformed_tool_schema(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path)
    with pytest.raises(ValueError, match="must be a JSON schema of type object"):
        chat.bind_tools([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}])
    with pytest.raises(ValueError, match="no name"):
        chat.bind_tools([{"type": "function", "function": {"description": "nameless", "parameters": {}}}])


def test_invalid_json_schema_for_structured_output(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, max_tokens=4)
    schema = {
        "title": "Bad",
        "type": "object",
        "properties": {"x": {"$ref": "#/definitions/missing"}},
    }
    with pytest.raises(
        ValueError, match=r"JSON schema error at #/properties/x: cannot resolve \$ref #/definitions/missing"
    ):
        chat.with_structured_output(schema).invoke("hi")


def test_complete_grammar_with_end_of_generation_banned_stops(tiny_model_path: str) -> None:
    # Once the grammar is complete only the end of generation may follow; ignore_eos bans it, so no token
    # is left: the output is done ("stop"), not a sampling error.
    llm = LlamaCpp(model_path=tiny_model_path, grammar='root ::= "yes"', max_tokens=20)
    result = llm.generate(["hi"], ignore_eos=True).generations[0][0]
    assert result.text == "yes"
    assert result.generation_info is not None and result.generation_info["finish_reason"] == "stop"


def test_a_template_whose_markers_the_vocabulary_lacks(tmp_path: Path) -> None:
    """Structured output after thinking: llama.cpp starts the schema's grammar after the template's generation
    prompt, re-tokenized on its own. The tiny model's SPM vocabulary has no token for DeepSeek-R1's markers
    and writes the prompt's first character inside a space-led token, which llama.cpp drops; it then
    rethrew a bare std::exception ("invalid grammar: std::exception"). Now the error says why."""
    from pydantic import BaseModel

    from tests.tiny_model import write_tiny_model

    class Answer(BaseModel):
        city: str

    templates = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "models" / "templates"
    r1 = (templates / "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja").read_text()
    path = write_tiny_model(tmp_path / "r1.gguf", chat_template=r1)
    chat = ChatLlamaCpp(model_path=str(path), max_tokens=8, temperature=0, reasoning=True, reasoning_budget=4)
    with pytest.raises(ValueError, match="does not spell it back") as info:
        chat.with_structured_output(Answer, method="json_schema").invoke("Where?")
    assert "std::exception" not in str(info.value)
    assert "<\uff5cAssistant\uff5c>" in str(info.value)  # the prompt it names (fullwidth bars)
