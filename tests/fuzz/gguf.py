"""Hostile GGUF files: mutations of real files' headers, files made from scratch, and named pathological
patches to the tiny model."""

from __future__ import annotations

import base64
import random
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.fuzz.common import VENDOR, Case
from tests.fuzz.gguf_format import (
    ARR,
    BOOL,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    KV,
    SCALAR_FORMATS,
    STR,
    U8,
    U16,
    U32,
    U64,
    Field,
    Layout,
    _enc_str,
    _enc_value,
    base_layout,
    read_base,
)

COUNT_VALUES_64 = [0, 1, 2**31, 2**32 - 1, 2**32, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
COUNT_VALUES_32 = [0, 1, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
ARCHES = ["llama", "bert", "nomic-bert", "gemma3", "qwen2", "qwen3moe", "t5", "mamba", "rwkv6", "gpt2", "clip", "x"]
TOKENIZERS = ["llama", "gpt2", "bert", "t5", "rwkv", "plamo2", "none", "no_vocab", "x"]
PRES = ["default", "llama3", "qwen2", "gpt-4o", "deepseek-llm", "tekken", "x"]
# Keys whose string value a loader looks up in a table, and values to try (an empty list: any string).
STRING_VALUES: dict[str, list[str]] = {
    "general.architecture": ARCHES,
    "tokenizer.ggml.model": TOKENIZERS,
    "tokenizer.ggml.pre": PRES,
    "general.name": [],
    "tokenizer.chat_template": [],
}
KEY_POOL = [
    "general.architecture",
    "general.alignment",
    "general.name",
    "llama.context_length",
    "llama.embedding_length",
    "llama.block_count",
    "llama.feed_forward_length",
    "llama.attention.head_count",
    "llama.attention.head_count_kv",
    "llama.rope.dimension_count",
    "llama.expert_count",
    "llama.vocab_size",
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.scores",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.chat_template",
]


def _random_value(rng: random.Random, depth: int = 0) -> tuple[int, Any]:
    vtype = rng.choice([U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64])
    if vtype == ARR and depth < 2:
        sub = rng.choice([U32, I32, F32, STR, U8, ARR] if depth == 0 else [U32, STR])
        items = [_random_value_of(rng, sub, depth + 1) for _ in range(rng.choice([0, 1, 2, 5, 40]))]
        return ARR, (sub, items)
    if vtype == ARR:
        vtype = STR
    return vtype, _random_value_of(rng, vtype, depth)


def _random_value_of(rng: random.Random, vtype: int, depth: int) -> Any:
    if vtype == STR:
        return rng.choice([b"", b"llama", b"\xff\xfe", bytes(rng.randrange(256) for _ in range(rng.randrange(40)))])
    if vtype == ARR:
        sub = rng.choice([U32, STR])
        return sub, [_random_value_of(rng, sub, depth + 1) for _ in range(rng.randrange(4))]
    if vtype in (F32, F64):
        return rng.choice([0.0, -1.0, 1e30, float("nan"), float("inf"), 1e-30])
    fmt = SCALAR_FORMATS[vtype]
    bits = struct.calcsize(fmt) * 8
    if fmt[-1].islower():  # signed
        return rng.choice([0, 1, -1, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1])
    return rng.choice([0, 1, 2**bits - 1, 2 ** (bits - 1)]) if vtype != BOOL else rng.choice([0, 1, 2, 255])


def _interesting(rng: random.Random, f: Field, data: bytes) -> bytes:
    """A value for field `f` that a loader could mishandle: extremes, zero, off by one, NaN."""
    if f.role == "value" and f.vtype in (F32, F64):
        return struct.pack(SCALAR_FORMATS[f.vtype], rng.choice([0.0, -1.0, 1e38, float("nan"), float("inf")]))
    fmt = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[f.size]
    (orig,) = struct.unpack_from(fmt, data, f.offset)
    limit = 2 ** (8 * f.size)
    pool = COUNT_VALUES_64 if f.size == 8 else COUNT_VALUES_32 if f.size == 4 else [0, 1, limit // 2, limit - 1]
    if f.role in ("type", "arr_type", "ttype"):
        pool = [*range(14), 255, 0x7FFFFFFF, 0xFFFFFFFF, 0xFFFFFFFE] if f.role != "ttype" else [*range(45), 9999, 2**31]
    choice = rng.choice([*pool, orig + 1, orig - 1, orig * 2, orig // 2])
    return struct.pack(fmt, choice % limit)


def _set_string(kv: KV, new: bytes) -> tuple[int, int, bytes]:
    """Replace the string value of `kv` (type and value): one splice."""
    return kv.type_offset, kv.end - kv.type_offset, struct.pack("<I", STR) + _enc_str(new)


def gguf_mutation(rng: random.Random, data: bytes, layout: Layout) -> tuple[list[list[Any]], int | None, str]:
    """Patches ([offset, deleted length, inserted bytes as hex]), an optional cut and what they do."""
    patches: list[tuple[int, int, bytes]] = []
    cut: int | None = None
    descs: list[str] = []
    header_end = max(layout.header_end, 24)
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        op = rng.choice(["truncate", "flip", "count", "count", "type", "value", "value", "retype", "string", "insert"])
        fields = layout.fields
        if op == "truncate":
            cut = rng.randrange(0, min(len(data), header_end + 64)) if rng.random() < 0.8 else rng.randrange(len(data))
            descs.append(f"cut at {cut}")
        elif op == "flip":
            offsets = sorted(rng.randrange(min(header_end, len(data))) for _ in range(rng.randint(1, 8)))
            for off in offsets:
                patches.append((off, 1, bytes([data[off] ^ rng.randint(1, 255)])))
            descs.append(f"flip bytes {offsets}")
        elif op in ("count", "type", "value") and fields:
            roles = {
                "count": ("n_tensors", "n_kv", "key_len", "str_len", "arr_len", "n_dims", "dim", "toffset", "version"),
                "type": ("type", "arr_type", "ttype"),
                "value": ("value",),
            }[op]
            candidates = [f for f in fields if f.role in roles]
            if candidates:
                f = rng.choice(candidates)
                new = _interesting(rng, f, data)
                patches.append((f.offset, f.size, new))
                number = struct.unpack(
                    SCALAR_FORMATS.get(f.vtype, "<I")
                    if f.role == "value"
                    else {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[f.size],
                    new,
                )[0]
                descs.append(f"{f.role}{'(' + f.key + ')' if f.key else ''}@{f.offset}={number}")
        elif op == "retype" and layout.kvs:
            kv = rng.choice(layout.kvs)
            vtype, value = _random_value(rng)
            patches.append(
                (kv.type_offset, kv.end - kv.type_offset, struct.pack("<I", vtype) + _enc_value(vtype, value))
            )
            descs.append(f"{kv.key} retyped as {vtype}")
        elif op == "string" and layout.kvs:
            strings = [kv for kv in layout.kvs if kv.key in STRING_VALUES]
            kv = rng.choice(strings or layout.kvs)
            new = rng.choice(STRING_VALUES.get(kv.key) or ["", "x" * 70000, "\xff"]).encode()
            if rng.random() < 0.2:
                new = bytes(rng.randrange(256) for _ in range(rng.randrange(32)))
            patches.append(_set_string(kv, new))
            descs.append(f"{kv.key}={new[:40]!r}")
        elif op == "insert" and any(f.role == "n_kv" for f in fields):
            key = rng.choice(KEY_POOL)
            arch = next((kv for kv in layout.kvs if kv.key == "general.architecture"), None)
            if arch is not None and key.startswith("llama."):
                name = data[arch.type_offset + 12 : arch.end].decode("utf-8", "replace")
                key = name + key[5:]
            vtype, value = _random_value(rng)
            if key == "general.alignment" and rng.random() < 0.7:
                vtype, value = U32, rng.choice([0, 1, 3, 31, 2**31, 2**32 - 1])
            n_kv = next(f for f in fields if f.role == "n_kv")
            (count,) = struct.unpack_from("<Q", data, n_kv.offset)
            patches.append((n_kv.offset, 8, struct.pack("<Q", count + 1)))
            patches.append(
                (layout.kv_start, 0, _enc_str(key.encode()) + struct.pack("<I", vtype) + _enc_value(vtype, value))
            )
            descs.append(f"insert {key} of type {vtype} (a duplicate if it exists)")
    patches += _keep_alignment(patches, layout)
    return [[off, n, new.hex()] for off, n, new in patches], cut, "; ".join(descs) or "unchanged"


def _keep_alignment(patches: list[tuple[int, int, bytes]], layout: Layout) -> list[tuple[int, int, bytes]]:
    """A change to general.name that makes the header's change in size a multiple of 32 bytes, so that the
    tensor data stays where the file says it is and the load goes past the header (if nothing else touches
    general.name)."""
    delta = sum(len(new) - n for _, n, new in patches)
    name = next((kv for kv in layout.kvs if kv.key == "general.name"), None)
    if delta % 32 == 0 or name is None or any(name.key_offset <= off < name.end for off, _, _ in patches):
        return []
    old = name.end - name.type_offset - 12  # the type and the length before the bytes
    return [_set_string(name, b"x" * ((old - delta) % 32))]


def random_gguf(rng: random.Random) -> tuple[bytes, str]:
    """A GGUF file made from scratch: well-known keys with random types and values, random tensor infos."""
    version = rng.choice([3, 3, 3, 2, 1, 0, 4, 2**32 - 1])
    kvs = []
    if rng.random() < 0.7:
        kvs.append((b"general.architecture", STR, rng.choice(ARCHES).encode()))
    for _ in range(rng.randrange(12)):
        key = rng.choice(KEY_POOL).encode() if rng.random() < 0.9 else bytes(rng.randrange(256) for _ in range(8))
        kvs.append((key, *_random_value(rng)))
    n_tensors = rng.choice([0, 0, 1, 2, 3])
    tensors = b""
    for i in range(n_tensors):
        dims = [rng.choice([0, 1, 2, 64, 2**31, 2**63]) for _ in range(rng.choice([0, 1, 2, 4, 5]))]
        tensors += _enc_str(f"blk.{i}.attn_q.weight".encode()) + struct.pack("<I", len(dims))
        tensors += b"".join(struct.pack("<Q", d) for d in dims)
        tensors += struct.pack("<IQ", rng.choice([0, 1, 2, 8, 30, 99]), rng.choice([0, 32, 2**63]))
    declared_tensors = n_tensors if rng.random() < 0.8 else rng.choice(COUNT_VALUES_64)
    declared_kv = len(kvs) if rng.random() < 0.8 else rng.choice(COUNT_VALUES_64)
    out = b"GGUF" + struct.pack("<IQQ", version, declared_tensors, declared_kv)
    out += b"".join(_enc_str(k) + struct.pack("<I", t) + _enc_value(t, v) for k, t, v in kvs) + tensors
    out += bytes(rng.randrange(256) for _ in range(rng.choice([0, 0, 32, 1024])))
    keys = [k for k, _, _ in kvs]
    desc = f"from scratch: version {version}, n_tensors {declared_tensors}, n_kv {declared_kv}, keys {keys}"
    return out, desc


def gguf_bases(tiny_model: str) -> list[tuple[str, int | None, float]]:
    """(path, prefix length or None, weight): llama.cpp's vocab files, the tiny model, real models' first MBs."""
    bases: list[tuple[str, int | None, float]] = [(tiny_model, None, 8.0)]
    for path in sorted((VENDOR / "models").glob("ggml-vocab-*.gguf")):
        # Small files are cheaper to load: each case reads the whole vocabulary.
        bases.append((str(path), None, min(1.0, 2e6 / path.stat().st_size)))
    from tests import models

    for source in models.MODELS.values():
        path = models.cache_dir() / source.filename
        if path.exists():
            bases.append((str(path), 8 << 20, 0.5))
    return bases


def gguf_cases(rng: random.Random, n: int, tiny_model: str) -> list[Case]:
    bases = gguf_bases(tiny_model)
    cases: list[Case] = []
    for _ in range(n):
        if rng.random() < 0.1:
            data, desc = random_gguf(rng)
            cases.append({"kind": "gguf", "desc": desc, "data": base64.b64encode(data).decode(), "mode": "model"})
            continue
        path, prefix, _ = rng.choices(bases, weights=[w for _, _, w in bases])[0]
        data, layout = base_layout(path, prefix)
        patches, cut, desc = gguf_mutation(rng, data, layout)
        # Vocab files have no tensors: as a model they fail; vocab_only reaches the tokenizer.
        mode = "model" if path == tiny_model or rng.random() < 0.5 else "vocab"
        name = Path(path).name + (f"[:{prefix}]" if prefix else "")
        cases.append(
            {
                "kind": "gguf",
                "desc": f"{name} ({mode}): {desc}",
                "base": path,
                "prefix": prefix,
                "patches": patches,
                "cut": cut,
                "mode": mode,
            }
        )
    return cases


def gguf_bytes(case: Case) -> bytes:
    if "data" in case:
        return base64.b64decode(case["data"])
    data = bytearray(read_base(case["base"], case.get("prefix")))
    for off, n, new in sorted(case["patches"], key=lambda p: -p[0]):
        data[off : off + n] = bytes.fromhex(new)
    if case.get("cut") is not None:
        del data[case["cut"] :]
    return bytes(data)


def _patch_field(data: bytes, layout: Layout, role: str, value: int, key: str = "") -> list[Any]:
    f = next(f for f in layout.fields if f.role == role and (not key or f.key == key))
    fmt = SCALAR_FORMATS[f.vtype] if role == "value" else {4: "<I", 8: "<Q"}[f.size]
    return [f.offset, f.size, struct.pack(fmt, value).hex()]


class _Tiny:
    """Patches to the tiny model, by name of what they change."""

    def __init__(self, data: bytes, layout: Layout) -> None:
        self.data, self.layout = data, layout

    def kv(self, key: str) -> KV:
        return next(k for k in self.layout.kvs if k.key == key)

    def set(self, role: str, value: int, key: str = "") -> list[list[Any]]:
        return [_patch_field(self.data, self.layout, role, value, key)]

    def retype(self, key: str, vtype: int, value: Any) -> list[list[Any]]:
        k = self.kv(key)
        return [[k.type_offset, k.end - k.type_offset, (struct.pack("<I", vtype) + _enc_value(vtype, value)).hex()]]

    def tokens_at(self, skip: int, new: bytes) -> list[list[Any]]:
        """Overwrite bytes of tokenizer.ggml.tokens, `skip` bytes after its type field."""
        return [[self.kv("tokenizer.ggml.tokens").type_offset + skip, len(new), new.hex()]]

    def insert_alignment(self, value: int) -> list[list[Any]]:
        n_kv = next(f for f in self.layout.fields if f.role == "n_kv")
        (count,) = struct.unpack_from("<Q", self.data, n_kv.offset)
        new = _enc_str(b"general.alignment") + struct.pack("<II", U32, value)
        return [[n_kv.offset, 8, struct.pack("<Q", count + 1).hex()], [self.layout.kv_start, 0, new.hex()]]


HEAD, BLOCKS = "llama.attention.head_count", "llama.block_count"
# name -> (patches to the tiny model, cut, load mode). Tensors stay valid, so a load can go far.
PATHOLOGICAL_GGUF: dict[str, Callable[[_Tiny], tuple[list[list[Any]], int | None, str]]] = {
    "n_tensors=2**63": lambda t: (t.set("n_tensors", 2**63), None, "model"),
    "n_tensors=2**64-1": lambda t: (t.set("n_tensors", 2**64 - 1), None, "model"),
    "n_kv=2**63": lambda t: (t.set("n_kv", 2**63), None, "model"),
    "n_kv=2**64-1": lambda t: (t.set("n_kv", 2**64 - 1), None, "model"),
    "first key length 2**63": lambda t: (t.set("key_len", 2**63), None, "model"),
    "first string length 2**63-1": lambda t: (t.set("str_len", 2**63 - 1), None, "model"),
    "token array length 2**63": lambda t: (t.set("arr_len", 2**63, "tokenizer.ggml.tokens"), None, "model"),
    "token array of u8, length 2**62": lambda t: (t.tokens_at(4, struct.pack("<IQ", U8, 2**62)), None, "model"),
    "first token length 2**63": lambda t: (t.tokens_at(16, struct.pack("<Q", 2**63)), None, "model"),
    "token array of arrays": lambda t: (t.tokens_at(4, struct.pack("<I", ARR)), None, "model"),
    "version 0": lambda t: (t.set("version", 0), None, "model"),
    "version 1": lambda t: (t.set("version", 1), None, "model"),
    "version 2**32-1": lambda t: (t.set("version", 2**32 - 1), None, "model"),
    "header only": lambda t: ([], 24, "model"),
    "magic only": lambda t: ([], 4, "model"),
    "tensor n_dims 2**32-1": lambda t: (t.set("n_dims", 2**32 - 1), None, "model"),
    "tensor dim 2**63": lambda t: (t.set("dim", 2**63), None, "model"),
    "tensor dim 0": lambda t: (t.set("dim", 0), None, "model"),
    "tensor type 9999": lambda t: (t.set("ttype", 9999), None, "model"),
    "tensor offset 2**63": lambda t: (t.set("toffset", 2**63), None, "model"),
    "tensor offset 1": lambda t: (t.set("toffset", 1), None, "model"),
    "head_count 0": lambda t: (t.set("value", 0, HEAD), None, "model"),
    "head_count_kv 0": lambda t: (t.set("value", 0, HEAD + "_kv"), None, "model"),
    "head_count 2**32-1": lambda t: (t.set("value", 2**32 - 1, HEAD), None, "model"),
    "block_count 2**31": lambda t: (t.set("value", 2**31, BLOCKS), None, "model"),
    "block_count 0": lambda t: (t.set("value", 0, BLOCKS), None, "model"),
    "embedding_length 0": lambda t: (t.set("value", 0, "llama.embedding_length"), None, "model"),
    "context_length 0": lambda t: (t.set("value", 0, "llama.context_length"), None, "model"),
    "context_length 2**32-1": lambda t: (t.set("value", 2**32 - 1, "llama.context_length"), None, "model"),
    "rope dimension_count 0": lambda t: (t.set("value", 0, "llama.rope.dimension_count"), None, "model"),
    "bos id 2**31-1": lambda t: (t.set("value", 2**31 - 1, "tokenizer.ggml.bos_token_id"), None, "model"),
    "eos id 2**32-1": lambda t: (t.set("value", 2**32 - 1, "tokenizer.ggml.eos_token_id"), None, "model"),
    "architecture as u32": lambda t: (t.retype("general.architecture", U32, 7), None, "model"),
    "unknown architecture": lambda t: (t.retype("general.architecture", STR, b"x"), None, "model"),
    "bert architecture": lambda t: (t.retype("general.architecture", STR, b"bert"), None, "model"),
    "unknown tokenizer": lambda t: (t.retype("tokenizer.ggml.model", STR, b"x"), None, "model"),
    "tokenizer no_vocab": lambda t: (t.retype("tokenizer.ggml.model", STR, b"no_vocab"), None, "model"),
    "tokenizer none": lambda t: (t.retype("tokenizer.ggml.model", STR, b"none"), None, "model"),
    "vocab_only, tokenizer no_vocab": lambda t: (t.retype("tokenizer.ggml.model", STR, b"no_vocab"), None, "vocab"),
    "tokens as u32 array": lambda t: (t.retype("tokenizer.ggml.tokens", ARR, (U32, [1, 2, 3])), None, "model"),
    "empty token list": lambda t: (t.retype("tokenizer.ggml.tokens", ARR, (STR, [])), None, "model"),
    "scores as strings": lambda t: (t.retype("tokenizer.ggml.scores", ARR, (STR, [b"a", b"b"])), None, "model"),
    "3 token types": lambda t: (t.retype("tokenizer.ggml.token_type", ARR, (I32, [1, 2, 3])), None, "model"),
    "chat template as array": lambda t: (t.retype("tokenizer.chat_template", ARR, (U32, [1])), None, "model"),
    "alignment 0": lambda t: (t.insert_alignment(0), None, "model"),
    "alignment 3": lambda t: (t.insert_alignment(3), None, "model"),
    "alignment 2**31": lambda t: (t.insert_alignment(2**31), None, "model"),
    "vocab_only, empty token list": lambda t: (t.retype("tokenizer.ggml.tokens", ARR, (STR, [])), None, "vocab"),
    "vocab_only, 3 token types": lambda t: (
        t.retype("tokenizer.ggml.token_type", ARR, (I32, [1, 2, 3])),
        None,
        "vocab",
    ),
    "vocab_only, bos id 2**31-1": lambda t: (t.set("value", 2**31 - 1, "tokenizer.ggml.bos_token_id"), None, "vocab"),
}


def pathological_gguf_case(name: str, tiny_model: str) -> Case:
    data, layout = base_layout(tiny_model, None)
    patches, cut, mode = PATHOLOGICAL_GGUF[name](_Tiny(data, layout))
    # A string of another length shifts the tensor data: general.name makes up for it.
    spliced = [(off, n, bytes.fromhex(new)) for off, n, new in patches]
    patches += [[off, n, new.hex()] for off, n, new in _keep_alignment(spliced, layout)]
    return {
        "kind": "gguf",
        "desc": f"tiny.gguf: {name}",
        "base": tiny_model,
        "prefix": None,
        "patches": patches,
        "cut": cut,
        "mode": mode,
    }
