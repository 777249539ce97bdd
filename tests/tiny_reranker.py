"""A tiny random-weight BERT cross-encoder (reranker) in GGUF, for tests against llama.cpp's own tools.

As llama.cpp's convert_hf_to_gguf.py writes a bge-reranker: architecture ``bert``, rank pooling
(``bert.pooling_type`` = 4), a classification head (``cls``: dense + tanh, ``cls.output``: one logit) and
the WordPiece vocabulary of ``vendor/llama.cpp/models/ggml-vocab-bert-bge.gguf``. The weights are random:
the scores mean nothing, but they are deterministic and differ from pair to pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFWriter

from tests.tiny_model import _field_value

ROOT = Path(__file__).resolve().parents[1]
BERT_VOCAB = ROOT / "vendor" / "llama.cpp" / "models" / "ggml-vocab-bert-bge.gguf"

# llama_pooling_type
RANK, CLS = 4, 2


def write_tiny_reranker(
    path: Path,
    *,
    n_embd: int = 64,
    n_layer: int = 2,
    n_head: int = 4,
    n_ff: int = 128,
    n_ctx_train: int = 512,
    seed: int = 0,
    pooling: int = RANK,
    classifier: bool = True,
    rerank_template: str | None = None,
) -> Path:
    """Write the model to `path`. `classifier=False, pooling=CLS` makes a plain BERT embedding model (not a
    reranker); `rerank_template` is stored as ``tokenizer.chat_template.rerank`` ({query}, {document})."""
    reader = GGUFReader(str(BERT_VOCAB))
    tokens = _field_value(reader, "tokenizer.ggml.tokens")
    assert isinstance(tokens, list)
    writer = GGUFWriter(str(path), "bert")
    writer.add_name("tiny-random-reranker" if classifier else "tiny-random-bert")
    writer.add_context_length(n_ctx_train)
    writer.add_embedding_length(n_embd)
    writer.add_block_count(n_layer)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_layer_norm_eps(1e-12)
    writer.add_causal_attention(False)
    writer.add_uint32("bert.pooling_type", pooling)
    writer.add_file_type(0)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(_field_value(reader, "tokenizer.ggml.token_type"))  # type: ignore[arg-type]
    writer.add_token_type_count(2)
    for key in ("unknown_token_id", "seperator_token_id", "padding_token_id", "cls_token_id", "mask_token_id"):
        writer.add_uint32(f"tokenizer.ggml.{key}", int(_field_value(reader, f"tokenizer.ggml.{key}")))  # type: ignore[call-overload]
    if rerank_template is not None:
        writer.add_string("tokenizer.chat_template.rerank", rerank_template)

    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float = 0.1) -> None:
        writer.add_tensor(name, (rng.standard_normal(shape) * scale).astype(np.float32))

    def norm(name: str) -> None:
        writer.add_tensor(f"{name}.weight", (1 + rng.standard_normal(n_embd) * 0.1).astype(np.float32))
        tensor(f"{name}.bias", n_embd)

    tensor("token_embd.weight", len(tokens), n_embd, scale=1.0)
    tensor("token_types.weight", 2, n_embd)
    tensor("position_embd.weight", n_ctx_train, n_embd)
    norm("token_embd_norm")
    for i in range(n_layer):
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            tensor(f"blk.{i}.{name}.weight", n_embd, n_embd)
            tensor(f"blk.{i}.{name}.bias", n_embd)
        norm(f"blk.{i}.attn_output_norm")
        tensor(f"blk.{i}.ffn_up.weight", n_ff, n_embd)
        tensor(f"blk.{i}.ffn_up.bias", n_ff)
        tensor(f"blk.{i}.ffn_down.weight", n_embd, n_ff)
        tensor(f"blk.{i}.ffn_down.bias", n_embd)
        norm(f"blk.{i}.layer_output_norm")
    if classifier:
        tensor("cls.weight", n_embd, n_embd, scale=0.3)
        tensor("cls.bias", n_embd)
        tensor("cls.output.weight", 1, n_embd, scale=1.0)
        tensor("cls.output.bias", 1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
