"""Settings shared by our subclasses of LangChain's standard chat-model suites."""

from __future__ import annotations

from langchain_llamacpp import ChatLlamaCpp


class ChatLlamaCppSuiteSettings:
    """What ChatLlamaCpp supports, as the standard suites ask for it."""

    @property
    def chat_model_class(self) -> type[ChatLlamaCpp]:
        return ChatLlamaCpp

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True
