"""A tiny random-weight llama model in GGUF, for fast tests that exercise the real engine.

The vocabulary (and optionally a chat template) comes from one of llama.cpp's vocab files in
``vendor/llama.cpp/models/``; the weights are random, so the text is nonsense but deterministic at
temperature 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from langchain_llamacpp import LlamaCpp

ROOT = Path(__file__).resolve().parents[1]
VOCAB = ROOT / "vendor" / "llama.cpp" / "models" / "ggml-vocab-llama-spm.gguf"

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _field_value(reader: GGUFReader, name: str) -> object:
    field = reader.fields[name]
    kind = field.types[0]
    if kind == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        return [field.parts[i][0].item() for i in field.data]
    if kind == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    return field.parts[field.data[0]][0].item()


def write_tiny_model(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 2048,
    seed: int = 0,
    chat_template: str | None = None,
    weight_scale: float = 0.02,
    n_expert: int = 0,
    arch: str = "llama",
    rope_sections: list[int] | None = None,
) -> Path:
    """Write the model to `path`. `weight_scale` is the standard deviation of the blocks' weights: at the
    default the attention is nearly uniform and weak, so that the next token depends little on the context.
    With `n_expert`, a mixture of experts (as Mixtral: two of them used per token) in place of each dense
    feed-forward block. `arch` "qwen2vl" with `rope_sections` (M-RoPE's time, height, width and unused
    sections, in pairs of rotated dimensions) makes the same blocks a Qwen2-VL text model."""
    reader = GGUFReader(str(VOCAB))
    tokens = _field_value(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    n_vocab = len(tokens)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(f"tiny-random-{arch}")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    if n_expert:
        writer.add_expert_count(n_expert)
        writer.add_expert_used_count(2)
    writer.add_rope_dimension_count(n_embd // n_head)
    if rope_sections is not None:
        writer.add_rope_dimension_sections(rope_sections)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(0)
    writer.add_tokenizer_model(str(_field_value(reader, "tokenizer.ggml.model")))
    writer.add_tokenizer_pre(str(_field_value(reader, "tokenizer.ggml.pre")))
    writer.add_token_list(tokens)
    writer.add_token_scores(_field_value(reader, "tokenizer.ggml.scores"))  # type: ignore[arg-type]
    writer.add_token_types(_field_value(reader, "tokenizer.ggml.token_type"))  # type: ignore[arg-type]
    writer.add_bos_token_id(int(_field_value(reader, "tokenizer.ggml.bos_token_id")))  # type: ignore[arg-type]
    writer.add_eos_token_id(int(_field_value(reader, "tokenizer.ggml.eos_token_id")))  # type: ignore[arg-type]
    writer.add_unk_token_id(int(_field_value(reader, "tokenizer.ggml.unknown_token_id")))  # type: ignore[arg-type]
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = weight_scale) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    tensor("token_embd.weight", n_vocab, n_embd, scale=1.0)
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    tensor("output.weight", n_vocab, n_embd, scale=0.5)
    for i in range(n_layer):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", n_embd, n_embd)
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        if n_expert:
            tensor(f"blk.{i}.ffn_gate_inp.weight", n_expert, n_embd, scale=1.0)
            tensor(f"blk.{i}.ffn_gate_exps.weight", n_expert, n_ff, n_embd)
            tensor(f"blk.{i}.ffn_up_exps.weight", n_expert, n_ff, n_embd)
            tensor(f"blk.{i}.ffn_down_exps.weight", n_expert, n_embd, n_ff)
            continue
        tensor(f"blk.{i}.ffn_gate.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_tiny_lora(path: Path, *, n_embd: int = 64, n_layer: int = 2, rank: int = 4, seed: int = 1) -> Path:
    """A random LoRA adapter (GGUF, as llama.cpp's convert_lora_to_gguf.py writes) for the tiny model's
    attention query and value projections; n_embd must match the base model."""
    writer = GGUFWriter(str(path), "llama")
    writer.add_type("adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(rank))
    rng = np.random.default_rng(seed)
    for i in range(n_layer):
        for name in ("attn_q", "attn_v"):
            # ggml shapes: A is [n_in, rank], B is [rank, n_out] (numpy lists them the other way round).
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_a", rng.standard_normal((rank, n_embd)).astype(np.float32))
            writer.add_tensor(f"blk.{i}.{name}.weight.lora_b", rng.standard_normal((n_embd, rank)).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def greedy_llm(path: str, **kwargs: Any) -> LlamaCpp:
    """A LlamaCpp for engine tests: greedy, 40 tokens, seeded, unless the test says otherwise."""
    defaults: dict[str, Any] = {"temperature": 0, "max_tokens": 40, "seed": 1}
    defaults.update(kwargs)
    return LlamaCpp(model_path=path, **defaults)
