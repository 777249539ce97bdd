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

from tests.tiny_model import CHATML, write_tiny_model

# The sizes of tests/tiny_vision.py's model (a ViT head of 8 dimensions: its M-RoPE takes a quarter each).
from tests.tiny_vision import PATCH_SIZE, TEXT_N_EMBD, TEXT_WEIGHT_SCALE, VISION_N_EMBD, ClipWriter

MERGE = 2  # 2x2 patches per token
TEXT_N_HEAD = 4
ROPE_SECTIONS = [2, 3, 3, 0]  # time, height, width, unused: pairs of the 16 rotated dimensions per head
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
    # Only the warmup's image size: images keep their own.
    clip = ClipWriter(path, "tiny-random-qwen2vl-mmproj", "qwen2vl_merger", seed=seed, image_size=64, eps=1e-6)
    clip.writer.add_vision_spatial_merge_size(MERGE)
    d = VISION_N_EMBD
    clip.tensor("v.patch_embd.weight", d, 3, PATCH_SIZE, PATCH_SIZE)
    clip.tensor("v.patch_embd.weight.1", d, 3, PATCH_SIZE, PATCH_SIZE)
    clip.blocks()
    clip.norm("v.post_ln", d)
    clip.mlp(d * MERGE * MERGE)
    return clip.close()
