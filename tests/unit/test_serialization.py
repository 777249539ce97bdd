from __future__ import annotations

from langchain_core.load import dumpd, load

from langchain_llamacpp import ChatLlamaCpp


def test_round_trip(tiny_model_path: str) -> None:
    chat = ChatLlamaCpp(model_path=tiny_model_path, temperature=0.3, max_tokens=7, n_seq=2, stop=["\n"])
    data = dumpd(chat)
    assert data["id"] == ["langchain_llamacpp", "chat_models", "ChatLlamaCpp"]
    restored = load(data, valid_namespaces=["langchain_llamacpp"], allowed_objects=[ChatLlamaCpp])
    assert isinstance(restored, ChatLlamaCpp)
    assert restored.model_dump() == chat.model_dump()
