from __future__ import annotations

from pathlib import Path

import pytest

from tests import models
from tests.tiny_model import CHATML, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random-weight llama GGUF with a ChatML template (no download)."""
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf", chat_template=CHATML))


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


