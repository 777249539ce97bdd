"""LangChain's standard integration tests for chat models, on Qwen2.5-Coder-0.5B-Instruct."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests

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
