"""The GGUF format as the fuzzer needs it: value types, where a header's counts and lengths are, encoding,
and base files read (and parsed) once."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

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


_layouts: dict[tuple[str, int | None], tuple[bytes, Layout]] = {}


def read_base(path: str, prefix: int | None) -> bytes:
    with open(path, "rb") as f:
        return f.read(prefix) if prefix else f.read()


def base_layout(path: str, prefix: int | None) -> tuple[bytes, Layout]:
    if (path, prefix) not in _layouts:
        data = read_base(path, prefix)
        _layouts[(path, prefix)] = data, parse_gguf(data)
    return _layouts[(path, prefix)]
