"""Settings shared by our subclasses of LangChain's standard chat-model suites."""

from __future__ import annotations

from langchain_llamacpp import ChatLlamaCpp


class ModelCapabilities:
    """What the package's chat path answers, whichever class reaches it: ChatLlamaCpp in-process, or
    ChatOpenAI through the server (tests/integration/test_server_standard.py)."""

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True


class ChatLlamaCppSuiteSettings(ModelCapabilities):
    """What ChatLlamaCpp supports, as the standard suites ask for it."""

    @property
    def chat_model_class(self) -> type[ChatLlamaCpp]:
        return ChatLlamaCpp

    @property
    def returns_usage_metadata(self) -> bool:
        return True
