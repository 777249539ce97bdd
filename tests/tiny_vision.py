"""A tiny random-weight vision model in GGUF: a text model and its multimodal projector (mmproj), for fast
tests of image input through llama.cpp's libmtmd.

The text model is ``tests/tiny_model.py``'s llama with a ChatML template. The mmproj is a LLaVA-style one
(``clip.projector_type = "mlp"``): a small CLIP ViT (patch embedding, learned absolute position embeddings,
pre-norm blocks with biases and GELU) whose features from the second-to-last block go through a
two-layer MLP (``mm.0``, GELU, ``mm.2``) into the text model's embedding space. It is the plainest
projector that llama.cpp supports: no special image tokens, no M-RoPE (the image tokens take ordinary
consecutive positions), one fixed-size square image (resized to ``IMAGE_SIZE``) and ``N_IMAGE_TOKENS`` tokens
per image. The weights are random: the text is nonsense, but deterministic at temperature 0 and dependent
on the image.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from tests.tiny_model import CHATML, write_tiny_model

IMAGE_SIZE = 32
PATCH_SIZE = 8
N_IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2
TEXT_N_EMBD = 64
TEXT_WEIGHT_SCALE = 0.125  # 1/sqrt(TEXT_N_EMBD): attention sharp and strong enough for the image to matter
VISION_N_EMBD = 32
VISION_N_HEAD = 4
VISION_N_FF = 64  # must differ from VISION_N_EMBD: llama.cpp swaps ffn up/down of "mlp" mmprojs otherwise
VISION_N_LAYER = 2  # the "mlp" projector takes the features of the second-to-last block: block 1 is unused
PROJECTOR_N_HIDDEN = 64
TEXT_FILE = "tiny-vision-text.gguf"
MMPROJ_FILE = "tiny-vision-mmproj.gguf"


def write_tiny_vision_model(directory: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write the tiny vision model into `directory`: returns (text model GGUF, mmproj GGUF)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = write_tiny_model(
        directory / TEXT_FILE, n_embd=TEXT_N_EMBD, seed=seed, chat_template=CHATML, weight_scale=TEXT_WEIGHT_SCALE
    )
    mmproj = _write_mmproj(directory / MMPROJ_FILE, seed=seed + 1)
    return text, mmproj


class ClipWriter:
    """An mmproj GGUF of random weights: the header every tiny projector here shares, and its tensors in
    the order they are drawn from one seeded generator."""

    def __init__(self, path: Path, name: str, projector: str, *, seed: int, image_size: int, eps: float) -> None:
        self.path = path
        self.rng = np.random.default_rng(seed)
        w = self.writer = GGUFWriter(str(path), "clip")
        w.add_name(name)
        w.add_file_type(0)
        w.add_clip_has_vision_encoder(True)
        w.add_clip_projector_type(projector)
        w.add_vision_image_size(image_size)
        w.add_vision_patch_size(PATCH_SIZE)
        w.add_vision_embedding_length(VISION_N_EMBD)
        w.add_vision_feed_forward_length(VISION_N_FF)
        w.add_vision_block_count(VISION_N_LAYER)
        w.add_vision_head_count(VISION_N_HEAD)
        w.add_vision_projection_dim(TEXT_N_EMBD)
        w.add_vision_attention_layernorm_eps(eps)
        w.add_vision_image_mean([0.5, 0.5, 0.5])
        w.add_vision_image_std([0.5, 0.5, 0.5])

    def tensor(self, name: str, *shape: int, scale: float | None = None) -> None:
        # numpy shapes are ggml's reversed: a weight is (n_out, n_in); default scale 1/sqrt(n_in).
        s = scale if scale is not None else 1.0 / np.sqrt(np.prod(shape[1:]))
        self.writer.add_tensor(name, (self.rng.standard_normal(shape) * s).astype(np.float32))

    def norm(self, name: str, n: int) -> None:
        self.writer.add_tensor(f"{name}.weight", np.ones(n, dtype=np.float32))
        self.writer.add_tensor(f"{name}.bias", np.zeros(n, dtype=np.float32))

    def blocks(self) -> None:
        """The ViT's pre-norm blocks, with biases."""
        d = VISION_N_EMBD
        for i in range(VISION_N_LAYER):
            self.norm(f"v.blk.{i}.ln1", d)
            for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
                self.tensor(f"v.blk.{i}.{name}.weight", d, d)
                self.tensor(f"v.blk.{i}.{name}.bias", d, scale=0.1)
            self.norm(f"v.blk.{i}.ln2", d)
            self.tensor(f"v.blk.{i}.ffn_up.weight", VISION_N_FF, d)
            self.tensor(f"v.blk.{i}.ffn_up.bias", VISION_N_FF, scale=0.1)
            self.tensor(f"v.blk.{i}.ffn_down.weight", d, VISION_N_FF)
            self.tensor(f"v.blk.{i}.ffn_down.bias", d, scale=0.1)

    def mlp(self, n_in: int) -> None:
        """The two-layer projector into the text model's embeddings (``mm.0``, GELU, ``mm.2``)."""
        self.tensor("mm.0.weight", PROJECTOR_N_HIDDEN, n_in)
        self.tensor("mm.0.bias", PROJECTOR_N_HIDDEN, scale=0.1)
        self.tensor("mm.2.weight", TEXT_N_EMBD, PROJECTOR_N_HIDDEN)
        self.tensor("mm.2.bias", TEXT_N_EMBD, scale=0.1)

    def close(self) -> Path:
        self.writer.write_header_to_file()
        self.writer.write_kv_data_to_file()
        self.writer.write_tensors_to_file()
        self.writer.close()
        return self.path


def _write_mmproj(path: Path, *, seed: int) -> Path:
    clip = ClipWriter(path, "tiny-random-llava-mmproj", "mlp", seed=seed, image_size=IMAGE_SIZE, eps=1e-5)
    clip.writer.add_vision_use_gelu(True)
    d = VISION_N_EMBD
    clip.tensor("v.patch_embd.weight", d, 3, PATCH_SIZE, PATCH_SIZE)
    clip.tensor("v.patch_embd.bias", d, scale=0.1)
    clip.tensor("v.position_embd.weight", N_IMAGE_TOKENS, d, scale=0.5)
    clip.norm("v.pre_ln", d)
    clip.blocks()
    clip.mlp(d)
    return clip.close()


def write_test_png(path: Path, width: int, height: int, seed: int) -> Path:
    """An RGB PNG (8 bits per channel), written with zlib and struct alone: a colour gradient between two
    random colours, along a random direction, with a little noise; different seeds give images as different
    to the tiny model as they look."""
    rng = np.random.default_rng(seed)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width]
    t = x / max(width - 1, 1) * np.cos(angle) + y / max(height - 1, 1) * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    image = start + t[..., None] * (end - start) + rng.normal(0, 8, (height, width, 3))
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    raw = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter type 0 (none) per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8 bits, RGB, deflate, no filter/interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    return path
