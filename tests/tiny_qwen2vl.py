"""A tiny random-weight Qwen2-VL-style model in GGUF: a text model with M-RoPE positions and its projector
(mmproj, ``clip.projector_type = "qwen2vl_merger"``), for tests of images whose tokens take other positions
than their count (llama.cpp's libmtmd, ``MTMD_POS_TYPE_MROPE``).

The text model is ``tests/tiny_model.py``'s blocks under the ``qwen2vl`` architecture (M-RoPE sections for
time, height and width) with a ChatML template. The projector follows ``tools/mtmd/models/qwen2vl.cpp``:
two patch embeddings (the two frames of a still image), no position embedding (the ViT rotates its
queries and keys by each patch's row and column), pre-norm blocks with biases and quick-GELU, a final
norm, then 2x2 patches merged into one token through a two-layer MLP (``mm.0``, GELU, ``mm.2``). An image
of W x H pixels (resized to multiples of 16 within the projector's pixel limits) gives a grid of
nx = W/16 by ny = H/16 tokens, all at one time position, with row and column positions from there; the
text after it continues max(nx, ny) positions on. The weights are random: the text is nonsense, but
deterministic at temperature 0 and dependent on the image and on the positions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from tests.tiny_model import CHATML, write_tiny_model

PATCH_SIZE = 8
MERGE = 2  # 2x2 patches per token
TEXT_N_EMBD = 64
TEXT_N_HEAD = 4
ROPE_SECTIONS = [2, 3, 3, 0]  # time, height, width, unused: pairs of the 16 rotated dimensions per head
TEXT_WEIGHT_SCALE = 0.125
VISION_N_EMBD = 32
VISION_N_HEAD = 4  # a head of 8 dimensions: the ViT's M-RoPE takes a quarter each
VISION_N_FF = 64  # must differ from VISION_N_EMBD: llama.cpp swaps ffn up/down otherwise
VISION_N_LAYER = 2
PROJECTOR_N_HIDDEN = 64
TEXT_FILE = "tiny-qwen2vl-text.gguf"
MMPROJ_FILE = "tiny-qwen2vl-mmproj.gguf"


def grid(width: int, height: int) -> tuple[int, int]:
    """(nx, ny) for an image whose sides are multiples of 16 within the projector's limits."""
    side = PATCH_SIZE * MERGE
    assert width % side == 0 and height % side == 0
    return width // side, height // side


def write_tiny_qwen2vl(directory: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny Qwen2-VL-style model into `directory`: returns (text model GGUF, mmproj GGUF)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = write_tiny_model(
        directory / TEXT_FILE,
        n_embd=TEXT_N_EMBD,
        n_head=TEXT_N_HEAD,
        seed=seed,
        chat_template=CHATML,
        weight_scale=TEXT_WEIGHT_SCALE,
        arch="qwen2vl",
        rope_sections=ROPE_SECTIONS,
    )
    return text, _write_mmproj(directory / MMPROJ_FILE, seed=seed + 1)


def _write_mmproj(path: Path, *, seed: int) -> Path:
    writer = GGUFWriter(str(path), "clip")
    writer.add_name("tiny-random-qwen2vl-mmproj")
    writer.add_file_type(0)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type("qwen2vl_merger")
    writer.add_vision_image_size(64)  # only the warmup's image size: images keep their own
    writer.add_vision_patch_size(PATCH_SIZE)
    writer.add_vision_spatial_merge_size(MERGE)
    writer.add_vision_embedding_length(VISION_N_EMBD)
    writer.add_vision_feed_forward_length(VISION_N_FF)
    writer.add_vision_block_count(VISION_N_LAYER)
    writer.add_vision_head_count(VISION_N_HEAD)
    writer.add_vision_projection_dim(TEXT_N_EMBD)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_mean([0.5, 0.5, 0.5])
    writer.add_vision_image_std([0.5, 0.5, 0.5])

    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int, scale: float | None = None) -> None:
        # numpy shapes are ggml's reversed: a weight is (n_out, n_in); default scale 1/sqrt(n_in).
        s = scale if scale is not None else 1.0 / np.sqrt(np.prod(shape[1:]))
        writer.add_tensor(name, (rng.standard_normal(shape) * s).astype(np.float32))

    def norm(name: str, n: int) -> None:
        writer.add_tensor(f"{name}.weight", np.ones(n, dtype=np.float32))
        writer.add_tensor(f"{name}.bias", np.zeros(n, dtype=np.float32))

    d = VISION_N_EMBD
    tensor("v.patch_embd.weight", d, 3, PATCH_SIZE, PATCH_SIZE)
    tensor("v.patch_embd.weight.1", d, 3, PATCH_SIZE, PATCH_SIZE)
    for i in range(VISION_N_LAYER):
        norm(f"v.blk.{i}.ln1", d)
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            tensor(f"v.blk.{i}.{name}.weight", d, d)
            tensor(f"v.blk.{i}.{name}.bias", d, scale=0.1)
        norm(f"v.blk.{i}.ln2", d)
        tensor(f"v.blk.{i}.ffn_up.weight", VISION_N_FF, d)
        tensor(f"v.blk.{i}.ffn_up.bias", VISION_N_FF, scale=0.1)
        tensor(f"v.blk.{i}.ffn_down.weight", d, VISION_N_FF)
        tensor(f"v.blk.{i}.ffn_down.bias", d, scale=0.1)
    norm("v.post_ln", d)
    tensor("mm.0.weight", PROJECTOR_N_HIDDEN, d * MERGE * MERGE)
    tensor("mm.0.bias", PROJECTOR_N_HIDDEN, scale=0.1)
    tensor("mm.2.weight", TEXT_N_EMBD, PROJECTOR_N_HIDDEN)
    tensor("mm.2.bias", TEXT_N_EMBD, scale=0.1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
