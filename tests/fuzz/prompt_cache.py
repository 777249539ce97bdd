"""Hostile prompt cache files (native/prompt_cache.h): a file saved by a real engine, then damaged (bytes
flipped, cut short, lengthened, header fields changed: another key, version, size), forged (its token and
media counts changed under a recomputed checksum), or made from scratch. The worker puts each where an
engine looks and runs a prompt that starts with the saved one: the file must be ignored with a warning,
or used, and the answer must be the one the prompt gets evaluated afresh or from the intact file.

The format is written here a second time, from its description, for the unit tests (`prompt_file`)."""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Sequence

from tests.fuzz.common import Case

MAGIC = b"LCLPCACH"
VERSION = 2
HEADER = 88
# name -> (offset, struct format) in the header
FIELDS = {"version": (8, "<I"), "header_size": (12, "<I"), "payload_size": (48, "<Q")}

# The prompt whose state the worker saves (at least prompt_cache_min_tokens=8 tokens of the tiny
# model), and the longer prompt each case then runs.
PROMPT = "The quick brown fox jumps over the lazy dog. " * 3
FOLLOW_UP = PROMPT + "And then"


def prompt_file(
    key: bytes,
    tokens: list[int],
    state: bytes,
    media: Sequence[tuple[int, int, bytes] | tuple[int, int, bytes, int]] = (),
    version: int = VERSION,
) -> bytes:
    """A prompt cache file: header (magic, version, header size, key, payload size, sha256) and payload;
    `media` as (offset, n_tokens, id), each taking as many positions as tokens, or (offset, n_tokens, id,
    n_pos)."""
    payload = struct.pack("<I", len(tokens)) + struct.pack(f"<{len(tokens)}i", *tokens)
    payload += struct.pack("<I", len(media))
    for offset, n_tokens, media_id, *n_pos in media:
        payload += struct.pack("<QQQI", offset, n_tokens, n_pos[0] if n_pos else n_tokens, len(media_id)) + media_id
    payload += struct.pack("<Q", len(state)) + state
    header = MAGIC + struct.pack("<II", version, HEADER) + key + struct.pack("<Q", len(payload))
    return header + hashlib.sha256(payload).digest() + payload


def reseal(data: bytes) -> bytes:
    """The same bytes with the checksum made to match the payload again (a forgery, not corruption)."""
    return data[:56] + hashlib.sha256(data[HEADER:]).digest() + data[HEADER:]


def payload_fields(data: bytes) -> dict[str, int]:
    """Offsets of the payload's own counts in a well-formed file."""
    n = struct.unpack_from("<I", data, HEADER)[0]
    media_at = HEADER + 4 + 4 * n
    at = media_at + 4
    for _ in range(struct.unpack_from("<I", data, media_at)[0]):
        at += 28 + struct.unpack_from("<I", data, at + 24)[0]
    return {"n_tokens": HEADER, "n_media": media_at, "state_size": at}


def mutate(base: bytes, ops: list[list[object]]) -> bytes:
    data = bytearray(base)
    for op in ops:
        kind = op[0]
        if kind == "flip":
            pos = int(op[1]) % max(1, len(data))
            data[pos] ^= 1 << int(op[2])
        elif kind == "cut":
            del data[int(op[1]) % max(1, len(data)) :]
        elif kind == "append":
            data += bytes.fromhex(str(op[1]))
        elif kind == "field":
            offset, fmt = FIELDS[str(op[1])]
            struct.pack_into(fmt, data, offset, int(op[2]) % (1 << (8 * struct.calcsize(fmt))))
        elif kind == "key":
            data[16:48] = bytes.fromhex(str(op[1]))
        elif kind == "forge":  # a count of the payload, then the checksum made to match
            fmt = "<Q" if op[1] == "state_size" else "<I"
            try:
                at = payload_fields(bytes(data))[str(op[1])]
                struct.pack_into(fmt, data, at, int(op[2]) % (1 << (8 * struct.calcsize(fmt))))
            except struct.error:
                continue  # an earlier op left no such field
            data = bytearray(reseal(bytes(data)))
        elif kind == "scratch":
            data = bytearray(bytes.fromhex(str(op[1])))
    return bytes(data)


def _op(rng: random.Random) -> list[object]:
    kind = rng.choice(["flip", "flip", "flip", "cut", "cut", "append", "field", "key", "forge", "forge"])
    if kind == "flip":
        # Header bytes half the time: every field's check gets its turn.
        return ["flip", rng.randrange(HEADER) if rng.random() < 0.5 else rng.randrange(1 << 20), rng.randrange(8)]
    if kind == "cut":
        return ["cut", rng.choice([0, 1, 8, HEADER - 1, HEADER, HEADER + 3, rng.randrange(1 << 20)])]
    if kind == "append":
        return ["append", rng.randbytes(rng.choice([1, 4, 100])).hex()]
    if kind == "field":
        name = rng.choice(sorted(FIELDS))
        return ["field", name, rng.choice([0, 1, 2, HEADER, 2**31, 2**32 - 1, 2**64 - 1, rng.randrange(1 << 24)])]
    if kind == "key":
        return ["key", rng.randbytes(32).hex()]
    counts = [0, 1, 2, 7, 2**24, 2**24 + 1, 2**32 - 1, 2**63, rng.randrange(1 << 16)]
    return ["forge", rng.choice(["n_tokens", "n_media", "state_size"]), rng.choice(counts)]


def prompt_cache_cases(rng: random.Random, n: int) -> list[Case]:
    cases: list[Case] = []
    for _ in range(n):
        if rng.random() < 0.1:
            size = rng.choice([0, 8, HEADER, HEADER + 16, 4096])
            ops: list[list[object]] = [["scratch", (MAGIC + rng.randbytes(size))[:size].hex()]]
        else:
            ops = [_op(rng) for _ in range(rng.choice([1, 1, 1, 2, 3]))]
        desc = "; ".join(" ".join(str(x)[:20] for x in op) for op in ops)
        cases.append({"kind": "prompt_cache", "desc": desc, "ops": ops})
    return cases
