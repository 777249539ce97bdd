"""Seeded fuzzing of what the package reads from outside: GGUF files, GBNF grammars, JSON schemas, chat templates.

Cases are plain JSON-able dicts ({"kind", "desc", ...}), generated here from a seed. They run in a worker
process (``python -m tests.fuzz worker``), many to a process, each announced in a progress file before it
runs, so that when the worker dies or hangs the runner knows which input did it, records it, and starts a
fresh worker at the next case. The worker sends its own stdout and stderr into a file and checks after
every case that nothing was written: with ``verbose=False`` the package prints nothing, on any input.

    python -m tests.fuzz replay build/fuzz-failures/<file>.json   # run one saved case here, in this process
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import re
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENDOR = ROOT / "vendor" / "llama.cpp"
FAILURES = ROOT / "build" / "fuzz-failures"

Case = dict[str, Any]

# Under ./dev asan: code runs 2-3x slower, and ASan's shadow memory needs an unlimited address space.
ASAN = "ASAN_OPTIONS" in os.environ
# A case taking longer than this counts as a hang: hostile input must fail within seconds. A template case
# gets twice as long: ChatLlamaCpp gives a template 10 s of trial renders when it loads it, then 10 s a render.
CASE_TIMEOUT_S = float(os.environ.get("FUZZ_CASE_TIMEOUT", "45" if ASAN else "15"))
# The worker's address space: a memory bomb gets bad_alloc instead of the machine's memory...
MEMORY_MB = int(os.environ.get("FUZZ_MEMORY_MB", "2048"))
# ...and fails its case anyway if it made the worker's peak memory grow by this much.
MEMORY_BOMB_MB = int(os.environ.get("FUZZ_MEMORY_BOMB_MB", "512"))


def seed_for(name: str) -> int:
    """The seed of one test: FUZZ_SEED (default 0) mixed with the test's name, so each test has its own stream."""
    base = int(os.environ.get("FUZZ_SEED", "0"))
    return (base * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))) % 2**32


def iterations(default: int) -> int:
    return int(os.environ.get("FUZZ_ITERATIONS", default))


def fuzz_seconds() -> float | None:
    value = os.environ.get("FUZZ_SECONDS")
    return float(value) if value else None


# -- GGUF ------------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR_FORMATS = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B"}
SCALAR_FORMATS.update({U64: "<Q", I64: "<q", F64: "<d"})


@dataclass
class Field:
    """A number in the file that the loader trusts: a count, a length, a type tag or a scalar value."""

    offset: int
    size: int
    role: str  # version n_tensors n_kv key_len type str_len arr_type arr_len value n_dims dim ttype toffset
    key: str = ""
    vtype: int = U32


@dataclass
class KV:
    key: str
    key_offset: int  # the key's length field
    type_offset: int
    end: int


@dataclass
class Layout:
    size: int
    fields: list[Field] = field(default_factory=list)
    kvs: list[KV] = field(default_factory=list)
    kv_start: int = 24
    header_end: int = 24  # end of what was parsed: KVs and tensor infos


def parse_gguf(data: bytes, array_items: int = 16) -> Layout:
    """Where the counts, lengths, types and values of a GGUF header are (as far as `data` goes)."""
    layout = Layout(len(data))
    pos = 0

    def num(fmt: str, role: str, key: str = "", vtype: int = U32) -> int:
        nonlocal pos
        size = struct.calcsize(fmt)
        (value,) = struct.unpack_from(fmt, data, pos)
        layout.fields.append(Field(pos, size, role, key, vtype))
        pos += size
        return int(value) if not isinstance(value, float) else 0

    def string(role: str, key: str = "") -> str:
        nonlocal pos
        n = num("<Q", role, key)
        if pos + n > len(data):
            raise struct.error("string past the end")
        text = data[pos : pos + n].decode("utf-8", "replace")
        pos += n
        return text

    def value(vtype: int, key: str, record: bool = True) -> None:
        nonlocal pos
        if vtype == STR:
            if record:
                string("str_len", key)
            else:
                (n,) = struct.unpack_from("<Q", data, pos)
                pos += 8 + n
        elif vtype == ARR:
            sub = num("<I", "arr_type", key)
            n = num("<Q", "arr_len", key)
            if sub in SCALAR_FORMATS and sub != STR:
                size = struct.calcsize(SCALAR_FORMATS[sub])
                for i in range(min(n, array_items)):
                    layout.fields.append(Field(pos + i * size, size, "value", key, sub))
                pos += n * size
            else:
                for i in range(n):
                    if pos >= len(data):
                        raise struct.error("array past the end")
                    value(sub, key, record=i < array_items)
        elif vtype in SCALAR_FORMATS:
            if record:
                num(SCALAR_FORMATS[vtype], "value", key, vtype)
            else:
                pos += struct.calcsize(SCALAR_FORMATS[vtype])
        else:
            raise struct.error(f"unknown type {vtype}")

    try:
        if data[:4] != b"GGUF":
            return layout
        pos = 4
        num("<I", "version")
        n_tensors = num("<Q", "n_tensors")
        n_kv = num("<Q", "n_kv")
        layout.kv_start = pos
        for _ in range(n_kv):
            start = pos
            key = string("key_len")
            type_offset = pos
            vtype = num("<I", "type", key)
            value(vtype, key)
            layout.kvs.append(KV(key, start, type_offset, pos))
            layout.header_end = pos
        for _ in range(n_tensors):
            name = string("key_len")
            n_dims = num("<I", "n_dims", name)
            for _ in range(min(n_dims, 8)):
                num("<Q", "dim", name)
            num("<I", "ttype", name)
            num("<Q", "toffset", name)
            layout.header_end = pos
    except (struct.error, IndexError, OverflowError):
        pass
    layout.header_end = max(layout.header_end, min(pos, len(data)))
    return layout


def _enc_str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def _enc_value(vtype: int, v: Any) -> bytes:
    if vtype == STR:
        return _enc_str(v if isinstance(v, bytes) else str(v).encode())
    if vtype == ARR:
        sub, items = v
        return struct.pack("<IQ", sub, len(items)) + b"".join(_enc_value(sub, x) for x in items)
    return struct.pack(SCALAR_FORMATS[vtype], v)


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


_layouts: dict[tuple[str, int | None], tuple[bytes, Layout]] = {}


def read_base(path: str, prefix: int | None) -> bytes:
    with open(path, "rb") as f:
        return f.read(prefix) if prefix else f.read()


def base_layout(path: str, prefix: int | None) -> tuple[bytes, Layout]:
    if (path, prefix) not in _layouts:
        data = read_base(path, prefix)
        _layouts[(path, prefix)] = data, parse_gguf(data)
    return _layouts[(path, prefix)]


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


# -- grammars --------------------------------------------------------------------------------------

GRAMMAR_TOKEN = re.compile(r'#[^\n]*|"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]|::=|[A-Za-z0-9_-]+|\{[^}]*\}|\s+|.', re.S)
GRAMMAR_SNIPPETS = [
    "(", ")", "|", "*", "+", "?", "{0,}", "{2,1}", "{3}", "{1,100}", "{99999999999}", "{", "}", '"', "[", "]", "\\",
    "::=", "root", "undefined-rule", '"\\x00"', '"\\xZZ"', '"\\U0010FFFF"', '"\\U00110000"', '"\\u12"', "[^]",
    "[z-a]", "[\\]-\\\\]", ".", '""', "()", "\n", "root ::= ", " | ", "\x00", "é",
]  # fmt: skip


def grammar_sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((VENDOR / "grammars").glob("*.gbnf"))}


def _token_mutation(rng: random.Random, tokens: list[str], pool: list[str]) -> tuple[list[str], str]:
    tokens = list(tokens)
    op = rng.choice(["delete", "duplicate", "swap", "insert", "insert", "replace", "cut"])
    if not tokens:
        return [rng.choice(pool)], "from one snippet"
    i = rng.randrange(len(tokens))
    if op == "delete":
        n = rng.choice([1, 1, 2, 5, 20])
        del tokens[i : i + n]
        return tokens, f"delete {n} tokens at {i}"
    if op == "duplicate":
        n = rng.choice([1, 3, 10, 50])
        tokens[i:i] = tokens[i : i + n] * rng.choice([1, 2, 10])
        return tokens, f"duplicate tokens {i}..{i + n}"
    if op == "swap":
        j = rng.randrange(len(tokens))
        tokens[i], tokens[j] = tokens[j], tokens[i]
        return tokens, f"swap tokens {i} and {j}"
    if op == "replace":
        tokens[i] = rng.choice(pool)
        return tokens, f"replace token {i} with {tokens[i]!r}"
    if op == "cut":
        return tokens[:i], f"cut after {i} tokens"
    snippet = rng.choice(pool)
    tokens.insert(i, snippet)
    return tokens, f"insert {snippet!r} at token {i}"


def random_grammar(rng: random.Random) -> str:
    """A small random GBNF grammar: rules that reference each other (and themselves), every operator."""
    names = ["root"] + [f"r{i}" for i in range(rng.randint(0, 6))]

    def expr(depth: int) -> str:
        alts = []
        for _ in range(rng.choice([1, 1, 2, 3])):
            items = []
            for _ in range(rng.randint(1, 4)):
                kind = rng.random()
                if kind < 0.3:
                    item = json.dumps(rng.choice(["a", "bc", "", "\n", "é", "{", "\\"]))
                elif kind < 0.45:
                    item = rng.choice(["[a-z]", "[^a]", "[0-9]+", ".", "[\\x00-\\x7f]", "[é-ü]"])
                elif kind < 0.75:
                    item = rng.choice(names)
                elif depth < 3:
                    item = f"({expr(depth + 1)})"
                else:
                    item = '"x"'
                items.append(item + rng.choice(["", "", "", "*", "+", "?", "{2}", "{0,3}", "{1,}"]))
            alts.append(" ".join(items))
        return " | ".join(alts)

    return "\n".join(f"{name} ::= {expr(0)}" for name in names) + "\n"


def grammar_cases(rng: random.Random, n: int) -> list[Case]:
    sources = grammar_sources()
    tokenized = {name: GRAMMAR_TOKEN.findall(text) for name, text in sources.items()}
    pool = GRAMMAR_SNIPPETS + sorted({t for ts in tokenized.values() for t in ts if t.strip() and len(t) < 40})
    cases = []
    for _ in range(n):
        r = rng.random()
        if r < 0.25:
            text = random_grammar(rng)
            desc = "random"
        elif r < 0.4:
            name, text = rng.choice(sorted(sources.items()))
            cut = rng.randrange(len(text))
            text, desc = text[:cut], f"{name}[:{cut}]"
        else:
            name = rng.choice(sorted(tokenized))
            tokens, descs = tokenized[name], []
            for _ in range(rng.choice([1, 1, 2, 4])):
                tokens, d = _token_mutation(rng, tokens, pool)
                descs.append(d)
            text, desc = "".join(tokens), f"{name}: " + "; ".join(descs)
        cases.append({"kind": "grammar", "desc": desc, "text": text, "generate": rng.random() < 0.3})
    return cases


def pathological_grammars() -> dict[str, str]:
    def nested(n: int) -> str:
        return "root ::= " + "(" * n + '"a"' + ")" * n + "\n"

    chain = "".join(f"r{i} ::= r{i + 1}\n" for i in range(100_000))
    return {
        "nested groups 10k": nested(10_000),
        "nested groups 100k": nested(100_000),
        "nested repetitions 10k": "root ::= " + "(" * 10_000 + '"a"' + ")*" * 10_000 + "\n",
        "100k rules": "root ::= r0\n"
        + "".join(f'r{i} ::= r{i + 1} | "a"\n' for i in range(100_000))
        + 'r100000 ::= "b"\n',
        "100k-rule reference chain": "root ::= r0\n" + chain + 'r100000 ::= "a"\n',
        "alternation of 100k": "root ::= " + " | ".join(f'"w{i}"' for i in range(100_000)) + "\n",
        "sequence of 100k": "root ::= " + " ".join('"a"' for _ in range(100_000)) + "\n",
        "literal of 1 MB": 'root ::= "' + "a" * (1 << 20) + '"\n',
        "char class of 100k ranges": "root ::= ["
        + "".join(f"{chr(0x4E00 + i % 20_000)}-{chr(0x4E00 + i % 20_000)}" for i in range(100_000))
        + "]\n",
        "left recursion": 'root ::= root "a" | "b"\n',
        "indirect left recursion": 'root ::= a\na ::= b "x"\nb ::= root | "y"\n',
        "empty-matching left recursion": 'root ::= e root "a" | "b"\ne ::= "" | "c"?\n',
        "undefined rule": "root ::= foo\n",
        "no root": 'start ::= "a"\n',
        "empty": "",
        "empty root": "root ::=\n",
        "repeat empty string": 'root ::= ("")*\n',
        "nested empty repetitions": 'root ::= ((""*)*)*\n',
        "repeat {0,1000000}": 'root ::= "a"{0,1000000}\n',
        "repeat {4294967295}": 'root ::= "a"{4294967295}\n',
        "repeat {18446744073709551616}": 'root ::= "a"{18446744073709551616}\n',
        "repeat {2,1}": 'root ::= "a"{2,1}\n',
        # Found by the randomized test: left recursion behind rules that match nothing goes undetected.
        "left recursion behind nullable rules": 'root ::= r2\nr1 ::= "a"?\nr2 ::= r1 r1 (r2 r2)?\n',
        # Found by the randomized test (c.gbnf, two tokens swapped): every split of a word is a parse, and
        # llama.cpp's sampler keeps a stack for each.
        "ambiguous recursion": "root ::= id\nid ::= [a-z] id*\n",
        "nested repeats {1000}{1000}": 'root ::= ("a"{1000}){1000}\n',
        "unterminated literal": 'root ::= "abc',
        "unterminated class": "root ::= [a-",
        "unterminated group": 'root ::= ("a"',
        "lone backslash": 'root ::= "\\',
        "bad escapes": 'root ::= "\\xZZ" "\\u12" "\\U00110000"\n',
        "nul byte": 'root ::= "a\x00b"\n',
        "token references": "root ::= <[999999999]> !<[-1]> <|unknown|>\n",
    }


# -- JSON schemas ----------------------------------------------------------------------------------

FORMATS = ["date", "time", "date-time", "uuid", "email", "uri", "x"]
PATTERNS = ["^a+$", "[0-9]{3}-[0-9]{4}", "(ab|cd)*", "^\\d{1,3}$", "a{2,}", "[", "(", "\\", "a**", "(?=a)", "^$", ".*"]


def random_schema(rng: random.Random, depth: int = 0, defs: list[str] | None = None) -> Any:
    defs = defs or []
    if depth > 3 or rng.random() < 0.2:
        return rng.choice(
            [
                {"type": "string"},
                {
                    "type": "integer",
                    "minimum": rng.choice([-(2**63), -5, 0, 3]),
                    "maximum": rng.choice([5, 1000, 2**63]),
                },
                {"type": "number", "exclusiveMinimum": 0.5},
                {"type": "boolean"},
                {"type": "null"},
                {"const": rng.choice([1, "x", None, [1], {"a": 1}])},
                {"enum": rng.sample(["a", "b", 1, 2.5, None, True, [], {}], rng.randint(0, 5))},
                {"type": "string", "pattern": rng.choice(PATTERNS)},
                {"type": "string", "format": rng.choice(FORMATS)},
                {"type": "string", "minLength": rng.choice([0, 2, -1, 1.5]), "maxLength": rng.choice([1, 10, 0])},
                {"$ref": rng.choice([*(f"#/$defs/{d}" for d in defs), "#", "#/$defs/missing", "#/properties"])},
                {},
                True,
                False,
            ]
        )
    kind = rng.choice(["object", "array", "anyOf", "oneOf", "allOf", "tuple", "defs"])
    if kind == "object":
        props = {f"p{i}": random_schema(rng, depth + 1, defs) for i in range(rng.randint(0, 4))}
        schema: dict[str, Any] = {"type": "object", "properties": props}
        if props and rng.random() < 0.6:
            schema["required"] = rng.sample(sorted(props), rng.randint(0, len(props))) + (
                ["nope"] if rng.random() < 0.1 else []
            )
        if rng.random() < 0.3:
            schema["additionalProperties"] = rng.choice([True, False, random_schema(rng, depth + 1, defs)])
        return schema
    if kind == "array":
        schema = {"type": "array", "items": random_schema(rng, depth + 1, defs)}
        if rng.random() < 0.5:
            schema["minItems"] = rng.choice([0, 1, 3, -1])
            schema["maxItems"] = rng.choice([0, 2, 5, 1])
        return schema
    if kind == "tuple":
        return {"type": "array", "prefixItems": [random_schema(rng, depth + 1, defs) for _ in range(rng.randint(0, 3))]}
    if kind == "defs":
        names = [f"d{depth}_{i}" for i in range(rng.randint(1, 3))]
        inner = defs + names
        return {"$defs": {n: random_schema(rng, depth + 1, inner) for n in names}, **{"$ref": f"#/$defs/{names[0]}"}}
    return {kind: [random_schema(rng, depth + 1, defs) for _ in range(rng.randint(0, 3))]}


def _mutate_json(rng: random.Random, value: Any) -> Any:
    """Replace one node of a JSON value with a wrong or extreme one."""
    if isinstance(value, dict) and value and rng.random() < 0.7:
        key = rng.choice(sorted(value))
        return {**value, key: _mutate_json(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return [*value[:i], _mutate_json(rng, value[i]), *value[i + 1 :]]
    return rng.choice([None, -1, 2**64, 1e308, "x", "", [], {}, {"type": "wrong"}, {"$ref": "#"}, [None], True])


def schema_cases(rng: random.Random, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        schema = random_schema(rng)
        desc = "random"
        if rng.random() < 0.4:
            schema, desc = _mutate_json(rng, schema), "random, mutated"
        # Some go the whole public way (with_structured_output on a chat model), the rest to the converter.
        via = "structured" if isinstance(schema, dict) and rng.random() < 0.05 else "native"
        if via == "structured":
            schema = {"title": "Answer", **schema}  # LangChain takes a dict schema with a title only
        # Sampling under a JSON grammar costs ~0.1 s a token on the tiny model's 32k vocabulary: some cases.
        generate = rng.random() < 0.2
        cases.append(
            {"kind": "schema", "desc": f"{desc} ({via})", "text": json.dumps(schema), "via": via, "generate": generate}
        )
    return cases


def pathological_schemas() -> dict[str, str]:
    def deep(open_: str, leaf: str, close: str, n: int) -> str:
        return open_ * n + leaf + close * n

    enum = json.dumps({"enum": [f"value-{i}" for i in range(100_000)]})
    props = json.dumps({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(20_000)}})
    return {
        "nested arrays 10k": deep('{"type": "array", "items": ', "{}", "}", 10_000),
        "nested objects 10k": deep('{"type": "object", "properties": {"a": ', "{}", "}}", 10_000),
        "nested anyOf 10k": deep('{"anyOf": [', '{"type": "null"}', "]}", 10_000),
        "nested JSON 100k": deep("[", "", "]", 100_000),
        "enum of 100k": enum,
        "enum of a deep value": '{"enum": [' + deep("[", "1", "]", 10_000) + "]}",
        "20k properties, all required": props[:-1]
        + ', "required": '
        + json.dumps([f"p{i}" for i in range(20_000)])
        + "}",
        "self $ref": '{"$ref": "#"}',
        "self $ref through $defs": '{"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}',
        "mutual $ref": '{"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}',
        "recursive tree": '{"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]}',
        "missing $ref": '{"$ref": "#/$defs/nothing"}',
        "remote $ref": '{"$ref": "https://example.invalid/schema.json"}',
        "odd $ref pointer": '{"$ref": "#/properties/~2/../items/999999999"}',
        "minItems 1e9": '{"type": "array", "items": {"type": "integer"}, "minItems": 1000000000}',
        "maxItems 1e9": '{"type": "array", "items": {"type": "integer"}, "minItems": 100000, "maxItems": 1000000000}',
        "minItems 2**64": '{"type": "array", "minItems": 18446744073709551616}',
        "minItems -1, maxItems -5": '{"type": "array", "minItems": -1, "maxItems": -5}',
        "minItems as string": '{"type": "array", "minItems": "x"}',
        "minLength > maxLength": '{"type": "string", "minLength": 2, "maxLength": 1}',
        "minItems > maxItems": '{"type": "array", "minItems": 1, "maxItems": 0}',
        "minLength 1e9": '{"type": "string", "minLength": 1000000000}',
        "maxLength 1e18": '{"type": "string", "minLength": 10, "maxLength": 1000000000000000000}',
        "integer bounds beyond int64": '{"type": "integer", "minimum": -1e300, "maximum": 1e300}',
        "integer bounds crossed": '{"type": "integer", "minimum": 10, "maximum": -10}',
        "pattern nested 10k": json.dumps({"type": "string", "pattern": "^" + "(" * 10_000 + "a" + ")" * 10_000 + "$"}),
        "pattern a{1000000}": '{"type": "string", "pattern": "^a{1000000}$"}',
        "pattern (a{1000}){1000}": '{"type": "string", "pattern": "^(a{1000}){1000}$"}',
        "pattern unbalanced": '{"type": "string", "pattern": "^(a$"}',
        "pattern trailing backslash": '{"type": "string", "pattern": "^a\\\\"}',
        "prefixItems 50k": json.dumps({"type": "array", "prefixItems": [{"type": "integer"}] * 50_000}),
        "allOf of 1000 conflicting": json.dumps({"allOf": [{"type": t} for t in ["string", "integer"] * 500]}),
        "not JSON": "{",
        "a number": "3",
    }


# -- chat templates ------------------------------------------------------------------------------

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    {"role": "user", "content": "Thanks"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TEMPLATE_TOKEN = re.compile(r"\{%-?|-?%\}|\{\{-?|-?\}\}|\{#|#\}|\s+|\w+|.", re.S)
TEMPLATE_SNIPPETS = [
    "{{", "}}", "{%", "%}", "{% endfor %}", "{% endif %}", "{% else %}", "{% if %}", "{{ messages[1000] }}",
    "{{ raise_exception('x') }}", "{{ x.y.z }}", "{{ 1/0 }}", "{{ 1 % 0 }}", "{{ none.attr }}",
    "{{ loop.index }}", "{{ tools|tojson }}", "{{ (messages|length) * 'ab' }}", "{% set ns = namespace() %}",
    "{{ messages|selectattr('role')|list }}", "{{ messages[0]['content'][::-1] }}", "{{ messages|map(attribute='x') }}",
    "{{ 'a'|indent(3) }}", "{{ '%d'|format('x') }}", "{% macro m(a) %}{{ a }}{% endmacro %}{{ m() }}", "|", "(",
    ")", "[", "]", "'", '"', "~", ".", "[-1]", "[1:-1]", "not", "in", "is", "defined", "none", "{#", "#}",
    "{%- generation -%}", "{% break %}", "{% continue %}", "{{ strftime_now('%Y') }}", "{{ range(5)|list }}",
]  # fmt: skip


def template_sources() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((VENDOR / "models" / "templates").glob("*.jinja"))}


def _render_options(rng: random.Random) -> dict[str, Any]:
    return {
        "messages": rng.choice(["full", "full", "user"]),
        "tools": rng.random() < 0.4,
        "add_generation_prompt": rng.random() < 0.8,
        "enable_thinking": rng.random() < 0.5,
    }


def template_prefix_cases(rng: random.Random, per_template: int) -> list[Case]:
    cases = []
    for name, text in template_sources().items():
        cuts = sorted(rng.sample(range(1, len(text) + 1), min(per_template, len(text))))
        for cut in cuts:
            # Most in this process (microseconds each), a few the whole way (ChatLlamaCpp, its render process).
            via = "chat" if rng.random() < 0.03 else "native"
            desc = f"{name}[:{cut}] ({via})"
            cases.append({"kind": "template", "desc": desc, "text": text[:cut], "via": via, **_render_options(rng)})
    return cases


def template_mutation_cases(rng: random.Random, n: int) -> list[Case]:
    sources = template_sources()
    tokenized = {name: TEMPLATE_TOKEN.findall(text) for name, text in sources.items()}
    words = sorted({t for ts in tokenized.values() for t in ts if t.strip() and len(t) < 30})
    pool = TEMPLATE_SNIPPETS + words
    cases = []
    for _ in range(n):
        name = rng.choice(sorted(sources))
        tokens, descs = tokenized[name], []
        for _ in range(rng.choice([1, 1, 2, 3, 6])):
            tokens, d = _token_mutation(rng, tokens, pool)
            descs.append(d)
        via = "chat" if rng.random() < 0.05 else "native"
        cases.append(
            {
                "kind": "template",
                "desc": f"{name}: {'; '.join(descs)} ({via})",
                "text": "".join(tokens),
                "via": via,
                **_render_options(rng),
            }
        )
    return cases


def pathological_templates() -> dict[str, str]:
    doubling = (
        "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s|length }}"
    )
    return {
        "self-calling macro": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
        "mutually recursive macros": (
            "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ a() }}{% endmacro %}{{ a() }}"
        ),
        "recursive loop over a cycle": (
            "{% set l = [] %}{% set _ = l.append(l) %}{% for x in l recursive %}{{ loop(x) }}{% endfor %}"
        ),
        "5000 nested parentheses": "{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}",
        "100k nested parentheses": "{{ " + "(" * 100_000 + "1" + ")" * 100_000 + " }}",
        "10k nested lists": "{{ " + "[" * 10_000 + "]" * 10_000 + " }}",
        "10k nested ifs": "{% if true %}" * 10_000 + "x" + "{% endif %}" * 10_000,
        "10k nested fors": "{% for x in [1] %}" * 10_000 + "x" + "{% endfor %}" * 10_000,
        "100k not": "{{ " + "not " * 100_000 + "true }}",
        "100k unary minus": "{{ " + "-" * 100_000 + "1 }}",
        "100k filters": "{{ 'a'" + "|upper" * 100_000 + " }}",
        "100k subscripts": "{{ messages" + "[0]" * 100_000 + " }}",
        "range(1e10)": "{% for i in range(10000000000) %}{% endfor %}",
        "nested ranges 1e5 x 1e5": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "range(1e10)|list": "{{ range(10000000000)|list|length }}",
        "'a' * 1e10": "{{ 'a' * 10000000000 }}",
        "[1] * 1e10": "{{ [1] * 10000000000 }}",
        "string doubling 64 times": doubling,
        "replace blow-up": "{{ ('a' * 100000)|replace('', 'a' * 100000) }}",
        "indent 1e10": "{{ 'a\nb'|indent(10000000000) }}",
        "tojson indent 1e9": "{{ messages|tojson(indent=1000000000) }}",
        "format width 1e9": "{{ '%1000000000d'|format(1) }}",
        "strftime 1 MB format": "{{ strftime_now('%Y' * 500000) }}",
        "cyclic list tojson": "{% set x = [] %}{% set _ = x.append(x) %}{{ x|tojson }}",
        "cyclic dict tojson": "{% set d = {} %}{% set _ = d.update({'d': d}) %}{{ d|tojson }}",
        "INT64_MIN / -1": "{{ (-9223372036854775807 - 1) / -1 }}",
        "INT64_MIN % -1": "{{ (-9223372036854775807 - 1) % -1 }}",
        "int overflow": "{{ 9223372036854775807 + 1 }}{{ 9223372036854775807 * 9223372036854775807 }}",
        "int literal beyond int64": "{{ 99999999999999999999999999 }}",
        "division by zero": "{{ 1 % 0 }}{{ 1 / 0 }}",
        "include": "{% include 'etc/passwd' %}",
        "extends": "{% extends 'base.html' %}",
        "raise_exception": "{{ raise_exception('boom') }}",
        "nul byte": "a\x00b{{ 'c\x00' }}",
        "10 MB of text": "a" * (10 << 20),
    }


def pathological_template_cases() -> dict[str, Case]:
    # The whole public way: ChatLlamaCpp(chat_template=...).invoke, conversation with tools bound.
    return {
        name: {"kind": "template", "desc": name, "text": text, "via": "chat", "messages": "full", "tools": True}
        for name, text in pathological_templates().items()
    }


# -- the worker ------------------------------------------------------------------------------------


class Targets:
    """What each kind of case is fed to, made on first use (inside the worker)."""

    def __init__(self, tiny_model: str, tmp: str) -> None:
        self.tiny_model = tiny_model
        self.tmp = tmp
        self._cache: dict[str, Any] = {}

    def _get(self, name: str, make: Callable[[], Any]) -> Any:
        if name not in self._cache:
            self._cache[name] = make()
        return self._cache[name]

    def llm(self) -> Any:
        from langchain_llamacpp import LlamaCpp

        # Temperature 1, fixed seed: grammars steer sampling through several branches, reproducibly.
        return self._get(
            "llm",
            lambda: LlamaCpp(
                model_path=self.tiny_model, max_tokens=4, temperature=1.0, seed=1, n_ctx=512, verbose=False
            ),
        )

    def vocab_model(self) -> Any:
        from langchain_llamacpp import native

        return self._get("vocab_model", lambda: native.load_model(self.tiny_model, vocab_only=True))

    def chat(self, **kwargs: Any) -> Any:
        from langchain_llamacpp import ChatLlamaCpp

        return ChatLlamaCpp(
            model_path=self.tiny_model, max_tokens=4, temperature=1.0, seed=1, n_ctx=512, verbose=False, **kwargs
        )

    def run(self, case: Case, index: int) -> str:
        return str(getattr(self, "run_" + case["kind"])(case, index))[:200]

    def run_gguf(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import LlamaCpp, native

        path = os.path.join(self.tmp, f"case-{os.getpid()}-{index}.gguf")  # a new path: no cached model reused
        Path(path).write_bytes(gguf_bytes(case))
        try:
            if case["mode"] == "vocab":
                model = native.load_model(path, vocab_only=True)
                tokens = model.tokenize("Hello world! <s> 日本語 \u200b\n\t12345", add_special=True, parse_special=True)
                text = model.detokenize(tokens, special=True)
                return (len(tokens), text, model.chat_template(), len(model.metadata()))
            with LlamaCpp(model_path=path, max_tokens=2, temperature=0, verbose=False) as llm:
                return llm.invoke("Hello")
        finally:
            os.unlink(path)

    def grammar(self, text: str, generate: bool) -> Any:
        """Check `text` as the engine does for a request; with `generate`, also sample a few tokens under it."""
        from langchain_llamacpp import native

        if generate:
            return self.llm().invoke("Hello", grammar=text)
        engine = self.llm().load()
        params = native.RequestParams()
        params.prompt = engine.model.tokenize("Hello", True, False)
        params.max_tokens = 1
        sampling = params.sampling
        sampling.grammar = text
        params.sampling = sampling
        request = engine.submit(params)  # parses and checks the grammar, or raises
        request.cancel()
        return request.wait(), request.finish_reason

    def run_grammar(self, case: Case, index: int) -> Any:
        return self.grammar(case["text"], case.get("generate", True))

    def run_schema(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import native

        if case["via"] == "structured":
            chat = self._get("chat", self.chat)  # one instance: one template process for all these cases
            return chat.with_structured_output(json.loads(case["text"])).invoke("Hello")
        return self.grammar(native.json_schema_to_grammar(case["text"]), case.get("generate", True))

    def run_template(self, case: Case, index: int) -> Any:
        from langchain_llamacpp import native

        messages = MESSAGES if case["messages"] == "full" else MESSAGES[1:2]
        if case["via"] == "chat":
            from langchain_core.messages import convert_to_messages

            chat = self.chat(chat_template=case["text"], enable_thinking=case.get("enable_thinking", True))
            runnable = chat.bind_tools(TOOLS) if case.get("tools") else chat
            return runnable.invoke(convert_to_messages(messages)).content
        templates = native.ChatTemplates(self.vocab_model(), case["text"])
        out = templates.apply(
            json.dumps(messages),
            json.dumps(TOOLS) if case["tools"] else "",
            "auto",
            False,
            "",
            case["add_generation_prompt"],
            {},
            case["enable_thinking"],
        )
        return out["prompt"]


def _outcome(fn: Callable[[], str]) -> dict[str, Any]:
    try:
        return {"status": "ok", "detail": fn()}
    except Exception as e:  # what any caller can catch
        message = str(e)
        # A clean failure is an exception that says what is wrong. SystemError means a broken binding;
        # UnicodeDecodeError, a native error message cut inside a UTF-8 character (the real one is lost).
        if not message.strip() or isinstance(e, (SystemError, UnicodeDecodeError)):
            return {"status": "bad-exception", "detail": f"{type(e).__name__}: {message!r}"}
        return {"status": "exception", "detail": f"{type(e).__name__}: {message[:300]}"}
    except BaseException as e:  # KeyboardInterrupt, SystemExit, ...: not for a bad input
        return {"status": "bad-exception", "detail": f"{type(e).__name__}: {e}"}


def worker(batch_file: str, progress_file: str) -> None:
    # Everything the process writes, from here to its exit, goes to a file checked after each case.
    capture = os.open(progress_file + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(capture, 1)
    os.dup2(capture, 2)
    crash_log = open(progress_file + ".crash", "w")  # noqa: SIM115 - open until the process ends
    import faulthandler

    faulthandler.enable(crash_log)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not ASAN:  # ASan gets hard_rss_limit_mb instead (see _run_batch)
        memory = MEMORY_MB << 20
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    batch = json.loads(Path(batch_file).read_text())
    progress = open(progress_file, "a", buffering=1)  # noqa: SIM115
    import langchain_llamacpp  # noqa: F401 - its import is not any case's fault

    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        targets = Targets(batch["tiny_model"], tmp)
        printed = os.fstat(capture).st_size
        progress.write(json.dumps({"event": "ready", "printed": printed}) + "\n")
        for index, case in batch["cases"]:
            progress.write(json.dumps({"event": "start", "index": index}) + "\n")
            t0 = time.monotonic()
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
            result = _outcome(lambda case=case, index=index: targets.run(case, index))  # type: ignore[misc]
            grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) >> 10
            if grown > MEMORY_BOMB_MB:
                result = {"status": "memory", "detail": f"{result['status']} after the peak memory grew by {grown} MB"}
            sys.stdout.flush()
            sys.stderr.flush()
            size = os.fstat(capture).st_size
            if size != printed:
                with open(progress_file + ".out", "rb") as f:
                    f.seek(printed)
                    text = f.read(min(size - printed, 2000)).decode("utf-8", "replace")
                result = {"status": "printed", "detail": f"{result['status']}, but printed: {text!r}"}
                printed = size
            result.update(event="end", index=index, seconds=round(time.monotonic() - t0, 3), printed=printed)
            progress.write(json.dumps(result) + "\n")
            if result["status"] == "memory":
                os._exit(0)  # the peak stays: the next cases need a fresh worker to be measured
        progress.write(json.dumps({"event": "done", "printed": printed}) + "\n")


# -- the runner ------------------------------------------------------------------------------------


@dataclass
class Result:
    case: Case
    status: str  # ok exception | crash hang memory printed bad-exception
    detail: str = ""
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.status in ("ok", "exception")


def _signal_name(rc: int) -> str:
    if rc < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-rc).name}"
    return f"exit code {rc}"


class _Events:
    """The worker's progress file, read as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.events: list[dict[str, Any]] = []

    def poll(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return self.events
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        self.events += [json.loads(line) for line in complete.splitlines()]
        return self.events


def _tail(path: Path, start: int) -> str:
    """What the worker wrote from `start` on; the head, where an assertion's message is (then a backtrace)."""
    try:
        return path.read_bytes()[start:][:1500].decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


def _run_batch(
    tmp: Path, run: int, todo: list[tuple[int, Case]], tiny_model: str, case_timeout: float
) -> tuple[list[dict[str, Any]], int, bool, str]:
    """One worker over `todo`: its events, exit status, whether it was killed as hung, and its own output."""
    batch, progress = tmp / f"batch-{run}.json", tmp / f"progress-{run}"
    cases = dict(todo)
    batch.write_text(json.dumps({"tiny_model": tiny_model, "cases": todo}))
    events = _Events(progress)
    # ggml's abort handler would attach gdb for a backtrace (seconds); the assertion's line is enough.
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    if ASAN:  # huge allocations fail (bad_alloc) instead of aborting, as without ASan
        env["ASAN_OPTIONS"] += f":allocator_may_return_null=1:hard_rss_limit_mb={MEMORY_MB}"
    with open(tmp / f"stdout-{run}", "wb+") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fuzz", "worker", str(batch), str(progress)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started_at, current, hung = time.monotonic(), None, False
        while proc.poll() is None:
            time.sleep(0.02)
            seen = events.poll()
            last = seen[-1] if seen else None
            if last is not None and last["event"] == "start":
                if current != last["index"]:
                    current, started_at = last["index"], time.monotonic()
                limit = case_timeout * (2 if cases[current]["kind"] == "template" else 1)
            else:
                limit = 120.0  # start-up (imports) or between two cases
            if time.monotonic() - started_at > limit:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                hung = True
        out.seek(0)
        early = out.read().decode("utf-8", "replace")  # before the worker redirected its output
    return events.poll(), proc.returncode, hung, early


def run_cases(cases: list[Case], tiny_model: str, case_timeout: float = CASE_TIMEOUT_S) -> list[Result]:
    """Run every case in worker processes; a crash or hang costs only a fresh worker for the rest."""
    results: dict[int, Result] = {}
    todo = list(enumerate(cases))
    with tempfile.TemporaryDirectory(prefix="fuzz-run-") as tmp_dir:
        tmp = Path(tmp_dir)
        run = 0
        while todo:
            run += 1
            events, rc, hung, early = _run_batch(tmp, run, todo, tiny_model, case_timeout)
            output = tmp / f"progress-{run}.out"
            ready = next((e for e in events if e["event"] == "ready"), None)
            if ready is None or ready["printed"] or early:
                what = "did not start" if ready is None else "printed while importing the package"
                raise RuntimeError(f"the fuzz worker {what} ({_signal_name(rc)}):\n{early}{_tail(output, 0)}")
            ended = [e for e in events if e["event"] == "end"]
            for e in ended:
                results[e["index"]] = Result(cases[e["index"]], e["status"], e["detail"], e["seconds"])
            last = events[-1]
            printed = max([ready["printed"]] + [e["printed"] for e in ended])
            if last["event"] == "start":  # this case killed the worker, or hung
                index = last["index"]
                crash_log = _tail(tmp / f"progress-{run}.crash", 0)
                if hung:
                    limit = case_timeout * (2 if cases[index]["kind"] == "template" else 1)
                    results[index] = Result(cases[index], "hang", f"no answer within {limit:.0f} s", limit)
                else:
                    detail = f"{_signal_name(rc)}\n{_tail(output, printed)}\n{crash_log}".strip()
                    results[index] = Result(cases[index], "crash", detail)
            elif rc != 0 or _tail(output, printed):
                # Every case ended, but not the process: blame the last one (a replay tells more).
                index = last.get("index", ended[-1]["index"] if ended else todo[-1][0])
                detail = f"at exit: {_signal_name(rc)}, output {_tail(output, printed)!r}"
                results[index] = Result(cases[index], "crash" if rc else "printed", detail)
            todo = [(i, c) for i, c in todo if i not in results]
    return [results[i] for i in range(len(cases))]


def confirm_templates(results: list[Result], tiny_model: str) -> list[Result]:
    """Run again through ChatLlamaCpp each template that failed in process.

    `native.ChatTemplates` renders in this process and is meant for trusted templates (thousands of cases a
    second); ChatLlamaCpp renders in a sandbox process, and that is the way that must handle any template.
    """
    redo = [
        i for i, r in enumerate(results) if not r.clean and r.case["kind"] == "template" and r.case["via"] == "native"
    ]
    cases = [
        {**results[i].case, "via": "chat", "desc": results[i].case["desc"].replace("(native)", "(chat)")} for i in redo
    ]
    out = list(results)
    for i, again in zip(redo, run_cases(cases, tiny_model) if cases else [], strict=True):
        note = f" [in process: {results[i].status}: {results[i].detail[:300]}]"
        out[i] = Result(again.case, again.status, again.detail + note, again.seconds)
    return out


def save_failure(result: Result, name: str) -> Path:
    """The failing input, to look at and to replay (``python -m tests.fuzz replay``)."""
    FAILURES.mkdir(parents=True, exist_ok=True)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]
    path = FAILURES / f"{stem}.json"
    path.write_text(json.dumps(result.case))
    if result.case["kind"] == "gguf":
        path.with_suffix(".gguf").write_bytes(gguf_bytes(result.case))
    else:
        ext = {"grammar": ".gbnf", "schema": ".schema.json", "template": ".jinja"}[result.case["kind"]]
        path.with_suffix(ext).write_text(result.case["text"], errors="surrogatepass")
    return path


def report(results: list[Result], label: str) -> str:
    """A failure message that names each bad input (and where it was saved)."""
    bad = [r for r in results if not r.clean]
    lines = [
        f"{len(bad)} of {len(results)} {label} inputs were not handled cleanly "
        f"(FUZZ_SEED={os.environ.get('FUZZ_SEED', '0')}, saved under {FAILURES.relative_to(ROOT)}):"
    ]
    for i, r in enumerate(bad):
        saved = save_failure(r, f"{label}-{i}-{r.case['desc'][:40]}")
        lines.append(
            f"- [{r.status}] {r.case['desc'][:200]}\n    {r.detail[:500]}\n    saved: {saved.relative_to(ROOT)}"
        )
    return "\n".join(lines)


def rounds(make: Callable[[random.Random, int], list[Case]], seed: int, n: int) -> Iterator[list[Case]]:
    """Batches of cases: one of `n`, or with FUZZ_SECONDS, batches from successive seeds until the time is up."""
    seconds = fuzz_seconds()
    if seconds is None:
        yield make(random.Random(seed), n)
        return
    deadline = time.monotonic() + seconds
    round_ = 0
    while round_ == 0 or time.monotonic() < deadline:
        yield make(random.Random(seed + round_ * 7919), n)
        round_ += 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker(argv[1], argv[2])
        return 0
    if argv[:1] == ["replay"]:
        case = json.loads(Path(argv[1]).read_text())
        tiny = str(ROOT / "build" / "test-models" / "tiny.gguf")
        with tempfile.TemporaryDirectory() as tmp:
            print(_outcome(lambda: Targets(tiny, tmp).run(case, 0)))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
