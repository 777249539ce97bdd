"""LangChain's standard integration tests for chat models, on Qwen2.5-Coder-0.5B-Instruct."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

import langchain_llamacpp._media as _media
from tests.standard_settings import ChatLlamaCppSuiteSettings


class TestChatLlamaCppIntegration(ChatLlamaCppSuiteSettings, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _model_path(self, qwen_path: str) -> None:
        type(self)._path = qwen_path

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # Greedy, so that the suite's answers do not change from run to run.
        return {"model_path": self._path, "n_ctx": 4096, "n_seq": 4, "seed": 7, "temperature": 0, "max_tokens": 256}

    @property
    def supports_model_override(self) -> bool:
        return False


# The standard suite downloads its test image; this machine has no network beyond the package index, so
# that one URL is served from llama.cpp's own test image (a JPEG where the suite expects a PNG: libmtmd
# reads the bytes, not the name).
SUITE_IMAGE_URL = (
    "https://raw.githubusercontent.com/langchain-ai/docs/4d11d08b6b0e210bd456943f7a22febbd168b543/"
    "src/images/agentic-rag-output.png"
)
SUITE_IMAGE = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp" / "tools" / "mtmd" / "test-1.jpeg"


class TestChatLlamaCppImages(ChatLlamaCppSuiteSettings, ChatModelIntegrationTests):
    """The suite's image tests, as shipped, on the tiny random-weight vision model (tests/tiny_vision.py):
    they check that every shape of image input is accepted and answered, which random weights can do.
    The rest of the suite runs on a real model above (tests/conftest.py keeps only the image tests here)."""

    @pytest.fixture(autouse=True)
    def _model_path(self, tiny_vision: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
        type(self)._paths = tiny_vision
        original_get = httpx.get

        def get(url: str, *args: Any, **kwargs: Any) -> httpx.Response:
            if url == SUITE_IMAGE_URL:
                return httpx.Response(200, content=SUITE_IMAGE.read_bytes(), request=httpx.Request("GET", url))
            return original_get(url, *args, **kwargs)

        original_fetch = _media._fetch
        monkeypatch.setattr(httpx, "get", get)
        monkeypatch.setattr(
            _media, "_fetch", lambda url: SUITE_IMAGE.read_bytes() if url == SUITE_IMAGE_URL else original_fetch(url)
        )

    @property
    def chat_model_params(self) -> dict[str, Any]:
        text, mmproj = self._paths
        return {"model_path": text, "mmproj_path": mmproj, "temperature": 0, "max_tokens": 8}

    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True
