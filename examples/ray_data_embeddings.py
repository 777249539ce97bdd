"""Embedding a corpus with Ray Data: `LlamaCppEmbeddings` as a class-based UDF in `map_batches`.

Each actor gets a pickled copy of the embeddings object, which travels without its engine and loads the
model on its first batch, so every actor has one engine of its own; Ray spreads the batches over the actors
(here on one machine, on a cluster over its nodes).

    pip install langchain-llamacpp "ray[data]"
    python examples/ray_data_embeddings.py nomic-embed-text-v1.5.f16.gguf
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import ray

from langchain_llamacpp import LlamaCppEmbeddings


class Embed:
    """A Ray Data UDF: the `text` column of a batch embedded into a `vector` column."""

    def __init__(self, embeddings: LlamaCppEmbeddings) -> None:
        self.embeddings = embeddings  # unpickled without an engine: it loads on the first batch, here

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        vectors = self.embeddings.embed_documents([str(text) for text in batch["text"]])
        return {**batch, "vector": np.asarray(vectors, dtype=np.float32)}


def embed_corpus(
    texts: list[str], embeddings: LlamaCppEmbeddings, actors: int = 2, batch_size: int = 16
) -> list[list[float]]:
    """The vectors of `texts`, in order, embedded by `actors` Ray actors with an engine each."""
    dataset = ray.data.from_items([{"id": i, "text": text} for i, text in enumerate(texts)])
    embedded = dataset.map_batches(
        Embed,
        fn_constructor_kwargs={"embeddings": embeddings},
        batch_size=batch_size,
        concurrency=actors,
        num_cpus=1,
    )
    rows = sorted(embedded.take_all(), key=lambda row: row["id"])
    return [[float(x) for x in row["vector"]] for row in rows]


def main(model_path: str) -> None:
    ray.init(num_cpus=2)
    texts = [f"Passage {i}: llama.cpp runs GGUF models on CPUs and GPUs." for i in range(64)]
    vectors = embed_corpus(texts, LlamaCppEmbeddings(model_path=model_path, n_threads=1))
    print(len(vectors), "vectors of", len(vectors[0]))
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
