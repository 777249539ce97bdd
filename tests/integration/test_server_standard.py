"""LangChain's standard integration tests for chat models, run for `ChatOpenAI` as shipped with its
`base_url` at our server (Qwen2.5-Coder-0.5B-Instruct, the model and settings of test_standard.py).

The suite skips for ChatOpenAI what its settings say the model lacks: image, audio and PDF inputs (Qwen2.5
Coder has no projector here), Anthropic-style inputs, and the model override tests (the server answers the
model it is asked for, and has one chat model of this kind).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_llamacpp.server import HTTPSettings, OpenAIAPI, create_app
from tests.serving import API_KEY, model_settings, serving
from tests.standard_settings import ModelCapabilities

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server_url(smollm_path: str, qwen_path: str, nomic_path: str) -> Iterator[str]:
    models, _ = model_settings(smollm_path, qwen_path, nomic_path)
    api = OpenAIAPI({"qwen": models["qwen"]})
    with serving(create_app(api, HTTPSettings(api_key=API_KEY))) as url:
        yield f"{url}/v1"


class TestChatOpenAIOnTheServer(ModelCapabilities, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _server(self, server_url: str) -> None:
        type(self)._url = server_url

    @property
    def chat_model_class(self) -> type[ChatOpenAI]:
        return ChatOpenAI

    @property
    def chat_model_params(self) -> dict[str, Any]:
        # max_retries=0: a retry would hide an error. An async client per test: the one ChatOpenAI caches per
        # base_url belongs to the first test's event loop, which pytest-asyncio closes after that test.
        return {
            "model": "qwen",
            "base_url": self._url,
            "api_key": API_KEY,
            "temperature": 0,
            "max_retries": 0,
            "http_async_client": httpx.AsyncClient(timeout=600),
        }

    @property
    def supports_model_override(self) -> bool:
        return False
