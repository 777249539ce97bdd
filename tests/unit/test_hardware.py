"""The machine's settings: KV cache types, where the weights go (devices, split, tensor overrides, MoE
experts in CPU memory), the fit to free device memory, and RoPE scaling / YaRN, in all three classes. The
effects are read from llama.cpp's own log (its KV cache accounting, the tensors it placed) and logits."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import pytest

import langchain_llamacpp._settings as _settings
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings, native
from tests.tiny_model import write_tiny_model

CLASSES = (LlamaCpp, ChatLlamaCpp, LlamaCppEmbeddings)
KV_CACHE = re.compile(r"llama_kv_cache: size = .* K \((\w+)\): .* V \((\w+)\)")
OVERRIDDEN = re.compile(r"tensor (\S+) \(.*\) buffer type overridden to (\S+)")


@pytest.fixture(scope="module")
def head32_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    # Heads of 32 dimensions: a q8_0/q4_0 block (32 values) divides them, as in real models.
    return str(write_tiny_model(tmp_path_factory.mktemp("hw") / "head32.gguf", n_embd=64, n_head=2))


@pytest.fixture(scope="module")
def moe_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("hw") / "moe.gguf", n_layer=3, n_expert=4))


@pytest.fixture
def llama_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="langchain_llamacpp")
    return caplog


def _all_kv_types(log: pytest.LogCaptureFixture) -> list[tuple[str, ...]]:
    """The K and V cache types of each context made, by llama.cpp's own accounting."""
    return [m.groups() for r in log.records if (m := KV_CACHE.search(r.getMessage()))]


def _kv_types(log: pytest.LogCaptureFixture) -> tuple[str, str]:
    """The K and V cache types of the last context made."""
    found = _all_kv_types(log)
    assert found, "no KV cache line in llama.cpp's log"
    return found[-1][0], found[-1][1]


def _make(cls: type, path: str, **kwargs: Any) -> Any:
    settings: dict[str, Any] = {"n_ctx": 256}
    if cls is not LlamaCppEmbeddings:
        settings.update(n_seq=1, temperature=0, max_tokens=8)
    return cls(model_path=path, **{**settings, **kwargs})


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_cache_types_in_each_class(cls: type, head32_path: str, llama_log: pytest.LogCaptureFixture) -> None:
    instance = _make(cls, head32_path, cache_type_k="q8_0", cache_type_v="q4_0", yarn_orig_ctx=2048)
    instance.load()
    assert _kv_types(llama_log) == ("q8_0", "q4_0")
    if cls is LlamaCpp:
        assert instance.invoke("Hello") != ""  # a quantized V: flash attention was turned on


def test_a_draft_models_context_takes_the_cache_types(head32_path: str, llama_log: pytest.LogCaptureFixture) -> None:
    # The model drafting for itself: the target's context, then the draft's, each with the types asked
    # (a quantized V: flash attention on in both); every draft is accepted, as with an f16 cache.
    llm = _make(
        LlamaCpp, head32_path, cache_type_k="q8_0", cache_type_v="q4_0", draft_model_path=head32_path, draft_min=4,
        batch_invariant=True, max_tokens=24, ignore_eos=True,
    )  # fmt: skip
    llm.load()
    assert _all_kv_types(llama_log) == [("q8_0", "q4_0")] * 2
    gen = llm.generate(["one two three four"]).generations[0][0]
    info = gen.generation_info or {}
    assert info["draft_n"] > 0 and info["draft_n_accepted"] == info["draft_n"]
    llama_log.clear()
    _make(LlamaCpp, head32_path, f16_kv=False, draft_model_path=head32_path).load()  # f16_kv=False: f32 in both
    assert _all_kv_types(llama_log) == [("f32", "f32")] * 2


def test_quantized_v_cache_needs_flash_attention(head32_path: str) -> None:
    with pytest.raises(ValueError, match=r"cache_type_v=q8_0 .*needs flash attention"):
        _make(LlamaCpp, head32_path, cache_type_v="q8_0", flash_attn=False).load()
    with pytest.raises(ValueError, match="cache_type_k"):  # pydantic, naming the field
        _make(LlamaCpp, head32_path, cache_type_k="q9_0")
    model = native.load_model(head32_path)
    with pytest.raises(ValueError, match=r"cache_type_k: unknown KV cache type 'q9_0'; known: f32, f16"):
        native.create_engine(model, n_ctx=64, cache_type_k="q9_0")


def test_llama_cpp_python_type_k_and_f16_kv(head32_path: str, llama_log: pytest.LogCaptureFixture) -> None:
    # type_k 8 (GGML_TYPE_Q8_0) in model_kwargs, as llama-cpp-python takes it; f16_kv=False still makes V f32.
    with pytest.warns(UserWarning, match="type_k given with f16_kv=False"):
        llm = _make(LlamaCpp, head32_path, f16_kv=False, model_kwargs={"type_k": 8})
    llm.load()
    assert _kv_types(llama_log) == ("q8_0", "f32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _make(LlamaCpp, head32_path, cache_type_k="q8_0")  # f16_kv not turned off: nothing to warn about
    for cls in CLASSES:
        with pytest.raises(ValueError, match=r"type_v=99 is not a KV cache type's ggml number"):
            _make(cls, head32_path, model_kwargs={"type_v": 99})
    with pytest.raises(ValueError, match="give cache_type_k or model_kwargs 'type_k', not both"):
        _make(LlamaCpp, head32_path, cache_type_k="q8_0", model_kwargs={"type_k": 8})


BAD_PLACEMENT = [
    ({"devices": ["NoSuchGPU0"]}, r"devices: 'NoSuchGPU0' is not a device this build can offload to \(unknown\)"),
    ({"devices": "CPU"}, r"devices: 'CPU' .*the CPU holds what is not offloaded"),
    (
        {"override_tensor": [r"blk\.0\..*=NoSuchBuffer"]},
        r"override_tensor: unknown buffer type 'NoSuchBuffer'.*known: CPU",
    ),
    ({"override_tensor": ["blk.(0=CPU"]}, r"override_tensor: invalid regex 'blk.\(0'"),
    ({"override_tensor": ["blk.0"]}, r"override_tensor: 'blk.0' is not of the form 'regex=buffer type'"),
    ({"tensor_split": [1.0, -1.0]}, r"tensor_split: each share must be a finite number >= 0"),
    ({"split_mode": 7}, r"split_mode=7: known: none \(0\), layer \(1\), row \(2\)"),
]


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize(("settings", "message"), BAD_PLACEMENT, ids=[str(s) for s, _ in BAD_PLACEMENT])
def test_bad_placement_is_a_value_error_naming_it(
    cls: type, settings: dict[str, Any], message: str, tiny_model_path: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _make(cls, tiny_model_path, **settings).load()


def _overridden(log: pytest.LogCaptureFixture) -> dict[str, str]:
    return {m[1]: m[2] for r in log.records if (m := OVERRIDDEN.search(r.getMessage()))}


def test_override_tensor_places_the_tensors_it_names(head32_path: str, llama_log: pytest.LogCaptureFixture) -> None:
    llm = _make(LlamaCpp, head32_path, override_tensor=r"blk\.1\.ffn_(up|down)\.weight=CPU", main_gpu=0)
    llm.load()
    assert _overridden(llama_log) == {"blk.1.ffn_up.weight": "CPU", "blk.1.ffn_down.weight": "CPU"}


def test_n_cpu_moe_keeps_the_experts_of_the_first_layers(moe_path: str, llama_log: pytest.LogCaptureFixture) -> None:
    assert native.load_model(moe_path).n_layer == 3
    moe = _make(LlamaCpp, moe_path, n_cpu_moe=2, max_tokens=12)
    text = moe.invoke("Hello world")
    experts = {f"blk.{i}.ffn_{kind}_exps.weight" for i in (0, 1) for kind in ("gate", "up", "down")}
    assert _overridden(llama_log) == dict.fromkeys(experts, "CPU")  # llama.cpp's --n-cpu-moe patterns, layers 0-1
    # The same model with its experts where llama.cpp puts them by default: the same tokens.
    assert _make(LlamaCpp, moe_path, max_tokens=12).invoke("Hello world") == text
    assert native.load_model(moe_path, n_cpu_moe=1).params.n_cpu_moe == 1


def test_fit_applies_only_where_n_gpu_layers_and_the_placement_are_left_alone(
    tiny_model_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_settings, "GPU_OFFLOAD", True)  # as on a build with a GPU backend

    def fits(**settings: Any) -> bool:
        return _settings.model_config(_make(LlamaCpp, tiny_model_path, **settings)).fit

    assert fits()
    assert not fits(n_gpu_layers=0) and not fits(n_gpu_layers=-1)
    assert not fits(tensor_split=[1, 1]) and not fits(override_tensor=["x=CPU"]) and not fits(n_cpu_moe=1)
    assert not fits(split_mode="row") and fits(split_mode="layer")
    assert not fits(rpc_servers=["127.0.0.1:50052"])  # all layers go to the RPC servers
    assert _settings.model_config(_make(LlamaCppEmbeddings, tiny_model_path)).fit


@pytest.mark.skipif(native.gpu_available(), reason="a build with a GPU backend")
def test_fit_changes_nothing_on_a_cpu_only_build(head32_path: str) -> None:
    llm = LlamaCpp(model_path=head32_path, n_seq=1, rope_scaling_type="none")  # n_gpu_layers and n_ctx not given
    assert not _settings.model_config(llm).fit  # the same settings, and so the same shared model, as before
    engine = llm.load()
    assert engine.model.params.n_gpu_layers == 0 and engine.n_ctx == 2048  # min(4096, the trained length)
    # The low-level API's fit=True says why nothing was fitted.
    model = native.load_model(head32_path, fit=True)
    assert model.fit_summary == "no GPU backend in this build: n_gpu_layers=0"
    assert model.params.n_gpu_layers == 0 and model.fit_n_ctx == -1


def _last_logits(model: native.Model, **settings: Any) -> list[float]:
    engine = native.create_engine(model, n_ctx=128, n_seq=1, **settings)
    tokens = list(model.tokenize("The quick brown fox jumps over the lazy dog " * 3, add_special=True))
    logits = engine.evaluate(0, tokens)[-1]
    engine.kv_remove(0, 0)
    return logits


def test_rope_scaling_and_yarn_reach_llama_cpp(head32_path: str) -> None:
    # YaRN without extrapolation (ext_factor 0) is linear interpolation, exactly; with llama.cpp's default
    # for YaRN (1) it is not, and neither is the model's own RoPE.
    model = native.load_model(head32_path, kv_overrides={"llama.rope.freq_base": "float:100.0"})
    linear = _last_logits(model, rope_scaling_type=1, rope_freq_scale=0.25)
    assert _last_logits(model, rope_scaling_type=2, rope_freq_scale=0.25, yarn_ext_factor=0.0) == linear
    assert _last_logits(model, rope_scaling_type=2, rope_freq_scale=0.25, yarn_orig_ctx=2048) != linear
    assert _last_logits(model) != linear
    with pytest.raises(ValueError, match="rope_scaling_type must be"):
        native.create_engine(model, n_ctx=64, rope_scaling_type=7)
    config = _settings.engine_config(_make(LlamaCpp, head32_path, rope_scaling_type="yarn", yarn_beta_fast=16.0))
    assert (config.rope_scaling_type, config.yarn_beta_fast) == (2, 16.0)
