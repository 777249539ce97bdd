from __future__ import annotations

import math

import pytest

from langchain_llamacpp import LlamaCppEmbeddings


def test_embed_documents_and_query(tiny_model_path: str) -> None:
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path)
    docs = embeddings.embed_documents(["hello world", "a completely different sentence", "hello world"])
    assert len(docs) == 3 and all(len(v) == 64 for v in docs)
    assert all(math.isclose(sum(x * x for x in v), 1.0, rel_tol=1e-4) for v in docs)
    assert docs[0] == pytest.approx(docs[2], abs=1e-5)  # deterministic
    assert docs[0] != pytest.approx(docs[1], abs=1e-3)
    assert embeddings.embed_query("hello world") == pytest.approx(docs[0], abs=1e-5)
    assert embeddings.embed_documents([]) == []


async def test_async_embeddings(tiny_model_path: str) -> None:
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path, normalize=False)
    vector = await embeddings.aembed_query("hello")
    assert len(vector) == 64 and not math.isclose(sum(x * x for x in vector), 1.0, rel_tol=1e-3)


def test_embedding_errors(tiny_model_path: str) -> None:
    with pytest.raises(FileNotFoundError):
        LlamaCppEmbeddings(model_path="/nope.gguf")
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path, n_batch=16, n_ctx=64)
    with pytest.raises(ValueError, match="more than n_batch"):
        embeddings.embed_query("word " * 100)
