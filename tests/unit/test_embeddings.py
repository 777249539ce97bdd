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
    with pytest.raises(ValueError, match=r"the query has \d+ tokens, more than the 16"):
        embeddings.embed_query("word " * 100)


def test_many_texts_per_step(tiny_model_path: str) -> None:
    # n_batch below llama.cpp's 256 sequences per batch used to abort the process at load.
    embeddings = LlamaCppEmbeddings(model_path=tiny_model_path, n_batch=16, n_ctx=64)
    engine = embeddings.load()
    texts = [f"w{i}" for i in range(40)]
    lengths = [len(engine.model.tokenize(t)) for t in texts]
    steps = engine.stats().steps
    vectors = embeddings.embed_documents(texts)
    steps = engine.stats().steps - steps
    assert len(vectors) == 40
    assert steps <= math.ceil(sum(lengths) / 16) + 1  # packed, not one text per step
    alone = [embeddings.embed_query(t) for t in texts[:4]]
    assert all(a == pytest.approx(b, abs=1e-5) for a, b in zip(alone, vectors, strict=False))
