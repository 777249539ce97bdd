"""Retrieval quality with nomic-embed-text-v1.5: recall@3 on a small corpus (tests/rag_corpus.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_llamacpp import LlamaCppEmbeddings
from tests.rag_corpus import PASSAGES, QUESTIONS

K = 3
# Measured on this corpus: 1.0. The threshold leaves room for a question or two to slip on another
# machine's rounding, not for a broken setup (see the last test).
MIN_RECALL = 0.9

Retrieved = dict[str, list[str]]


@pytest.fixture(scope="module")
def retrieved(nomic_path: str) -> Retrieved:
    """For each question, the ids of the K passages the vector store returns, best first."""
    store = InMemoryVectorStore(LlamaCppEmbeddings(model_path=nomic_path))
    ids = store.add_documents([Document(page_content=text, id=pid) for pid, text in PASSAGES.items()])
    assert ids == list(PASSAGES)
    return {question: [doc.id or "" for doc in store.similarity_search(question, k=K)] for question, _ in QUESTIONS}


def recall_at_k(retrieved: Retrieved) -> float:
    answers = dict(QUESTIONS)
    return sum(answers[question] in ids[:K] for question, ids in retrieved.items()) / len(retrieved)


def test_corpus_is_well_formed() -> None:
    assert len(PASSAGES) >= 30 and len(QUESTIONS) >= 20
    assert all(pid in PASSAGES for _, pid in QUESTIONS)
    assert len({q for q, _ in QUESTIONS}) == len(QUESTIONS)


def test_recall_at_3(retrieved: Retrieved, record_property: Callable[[str, object], None]) -> None:
    recall = recall_at_k(retrieved)
    record_property(f"recall_at_{K}", recall)
    print(f"recall@{K} = {recall:.3f} over {len(QUESTIONS)} questions")
    answers = dict(QUESTIONS)
    misses = {q: (answers[q], ids) for q, ids in retrieved.items() if answers[q] not in ids}
    assert recall >= MIN_RECALL, f"recall@{K} {recall:.3f} < {MIN_RECALL}; missed (expected, got): {misses}"


def test_recall_with_vectors_under_the_wrong_ids_is_low(retrieved: Retrieved) -> None:
    # The same retrieval as if each vector had been stored under the next passage's id (an off-by-one
    # between texts and vectors): the metric above must then fail by a wide margin.
    pids = list(PASSAGES)
    shifted = dict(zip(pids, pids[1:] + pids[:1], strict=True))
    recall = recall_at_k({q: [shifted[pid] for pid in ids] for q, ids in retrieved.items()})
    print(f"recall@{K} with ids shifted by one = {recall:.3f}")
    assert recall < 0.5
