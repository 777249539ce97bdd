from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import models
from tests import tiny_qwen2vl as qwen2vl_files
from tests.tiny_model import CHATML, write_tiny_model
from tests.tiny_vision import MMPROJ_FILE, TEXT_FILE, write_tiny_vision_model

ROOT = Path(__file__).resolve().parents[1]
# Relative to the repository root (pytest's working directory), so serialized models compare
# equal across checkouts (the standard serialization test keeps a snapshot).
TINY_MODEL = Path("build") / "test-models" / "tiny.gguf"


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """A tiny random-weight llama GGUF with a ChatML template (no download)."""
    path = ROOT / TINY_MODEL
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        write_tiny_model(partial, chat_template=CHATML)
        partial.replace(path)
    return str(TINY_MODEL) if Path.cwd() == ROOT else str(path)


def _model_pair(name: str, files: tuple[str, str], write: Callable[[Path], tuple[Path, Path]]) -> tuple[str, str]:
    directory = ROOT / "build" / "test-models" / name
    text, mmproj = directory / files[0], directory / files[1]
    if not (text.exists() and mmproj.exists()):
        with tempfile.TemporaryDirectory(dir=directory.parent if directory.parent.exists() else None) as tmp:
            written = write(Path(tmp))
            directory.mkdir(parents=True, exist_ok=True)
            for path in written:
                os.replace(path, directory / path.name)
    return str(text), str(mmproj)


@pytest.fixture(scope="session")
def tiny_vision() -> tuple[str, str]:
    """A tiny random-weight vision model: (text model GGUF, its LLaVA-style mmproj GGUF)."""
    return _model_pair("tiny-vision", (TEXT_FILE, MMPROJ_FILE), write_tiny_vision_model)


@pytest.fixture(scope="session")
def tiny_qwen2vl() -> tuple[str, str]:
    """A tiny random-weight Qwen2-VL-style model: (text model GGUF with M-RoPE, its qwen2vl_merger mmproj)."""
    files = (qwen2vl_files.TEXT_FILE, qwen2vl_files.MMPROJ_FILE)
    return _model_pair("tiny-qwen2vl", files, qwen2vl_files.write_tiny_qwen2vl)


@pytest.fixture(scope="session")
def vocab_path() -> str:
    return str(Path(__file__).resolve().parents[1] / "vendor" / "llama.cpp" / "models" / "ggml-vocab-llama-spm.gguf")


def _real_model(name: str) -> str:
    try:
        return str(models.get(name))
    except Exception as e:  # a missing model is a failure, not a skip: CI must have them
        pytest.fail(f"could not fetch the {name} test model: {e}")


@pytest.fixture(scope="session")
def gemma_path() -> str:
    return _real_model("gemma3")


@pytest.fixture(scope="session")
def smollm_path() -> str:
    return _real_model("smollm2")


@pytest.fixture(scope="session")
def qwen_path() -> str:
    return _real_model("qwen")


@pytest.fixture(scope="session")
def nomic_path() -> str:
    return _real_model("nomic")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The standard suite's class for image input runs on a random-weight model: its image tests only
    # (the others run on a real model in TestChatLlamaCppIntegration).
    deselected = [
        item
        for item in items
        if getattr(item, "cls", None) is not None
        and item.cls.__name__ == "TestChatLlamaCppImages"
        and "image" not in item.name
    ]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]
