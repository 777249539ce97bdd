"""LlamaCppEmbeddings on a real embedding model (nomic-embed-text-v1.5, F16, mean pooling)."""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from langchain_llamacpp import ChatLlamaCpp, LlamaCppEmbeddings
from tests.llama_tools import llama_embedding

TEXTS = [
    "The Rhine flows from the Swiss Alps to the North Sea.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "A sourdough starter is a culture of wild yeast and bacteria.",
    "search_query: what is the capital of France?",
    "Binary search halves the interval on every comparison, so it needs O(log n) steps "
    "on a sorted array of n elements; " * 6,
]


# F16 products sum in another order for another batch shape, so a text embedded beside others differs from
# the same text alone by up to ~1e-4 (llama-embedding's own vectors do the same); a text given another
# text's sequence would differ by ~0.1.
BATCH_TOLERANCE = 3e-4


def _long_text(n_words: int) -> str:
    words = ["river", "mountain", "lantern", "orchard", "glacier", "harbor", "meadow", "thunder", "copper", "violin"]
    return " ".join(words[(i * 7) % len(words)] for i in range(n_words))


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def embeddings(nomic_path: str) -> LlamaCppEmbeddings:
    return LlamaCppEmbeddings(model_path=nomic_path)


@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", True), ("mean", False)])
def test_vectors_equal_llama_embedding(nomic_path: str, pooling: str, normalize: bool) -> None:
    # Raw texts on both sides (no task prefix), the same pooling, normalization and threads.
    ours = LlamaCppEmbeddings(
        model_path=nomic_path, pooling_type=pooling, normalize=normalize, document_instruction="", n_threads=2
    )
    vectors = ours.embed_documents(TEXTS)
    reference = llama_embedding(
        nomic_path, TEXTS, pooling=pooling, normalize=2 if normalize else -1, n_ctx=2048, threads=2
    )
    assert len(vectors) == len(reference) == len(TEXTS)
    worst = max(abs(a - b) for v, r in zip(vectors, reference, strict=True) for a, b in zip(v, r, strict=True))
    assert worst < 1e-4, f"largest difference from llama-embedding: {worst:.2e}"
    if normalize:
        assert all(math.isclose(_dot(v, v), 1.0, rel_tol=1e-5) for v in vectors)


def test_model_defaults(embeddings: LlamaCppEmbeddings) -> None:
    engine = embeddings.load()
    assert engine.n_embd == 768
    assert engine.pooling == 1  # the model's own: mean
    assert engine.embed_max_tokens == 2048  # the trained context, in one batch
    assert embeddings.query_prefix == "search_query: "
    assert embeddings.document_prefix == "search_document: "


def test_prefixes_are_applied(nomic_path: str, embeddings: LlamaCppEmbeddings) -> None:
    raw = LlamaCppEmbeddings(model_path=nomic_path, query_instruction="", document_instruction="")
    text = "Where does the Rhine end?"
    assert embeddings.embed_query(text) == pytest.approx(raw.embed_query("search_query: " + text), abs=1e-5)
    assert embeddings.embed_documents([text])[0] == pytest.approx(
        raw.embed_documents(["search_document: " + text])[0], abs=1e-5
    )
    assert embeddings.embed_query(text) != pytest.approx(raw.embed_query(text), abs=1e-3)


def test_long_chunks_embed_with_defaults(embeddings: LlamaCppEmbeddings) -> None:
    # RecursiveCharacterTextSplitter's usual chunk sizes give texts of 700+ tokens.
    text = _long_text(900)
    n_tokens = len(embeddings.load().model.tokenize("search_document: " + text))
    assert 900 <= n_tokens <= 2048
    (vector,) = embeddings.embed_documents([text])
    assert len(vector) == 768


def test_too_long_text_names_it_or_truncates(nomic_path: str, embeddings: LlamaCppEmbeddings) -> None:
    text = _long_text(2500)
    with pytest.raises(ValueError, match=r"text 1 has \d+ tokens, more than the 2048 .*truncate=True"):
        embeddings.embed_documents(["short", text])
    with pytest.raises(ValueError, match=r"the query has \d+ tokens"):
        embeddings.embed_query(text)
    truncating = LlamaCppEmbeddings(model_path=nomic_path, truncate=True)
    (cut,) = truncating.embed_documents([text])
    model = truncating.load().model
    tokens = model.tokenize("search_document: " + text)
    # The same as embedding the first 2047 tokens followed by the [SEP] the tokenizer ends with.
    manual = truncating.load().embed([[*tokens[:2047], tokens[-1]]], 2)[0]
    assert cut == pytest.approx(manual, abs=1e-6)


def test_batched_equals_one_at_a_time(embeddings: LlamaCppEmbeddings) -> None:
    texts = [f"Passage {i}: " + _long_text(20 + 13 * i) for i in range(12)]
    together = embeddings.embed_documents(texts)
    alone = [embeddings.embed_documents([t])[0] for t in texts]
    worst = max(abs(a - b) for v, r in zip(together, alone, strict=True) for a, b in zip(v, r, strict=True))
    assert worst < BATCH_TOLERANCE


def test_many_texts_share_each_step(nomic_path: str) -> None:
    embeddings = LlamaCppEmbeddings(model_path=nomic_path, n_ctx=512)
    engine = embeddings.load()
    texts = [f"note {i}" for i in range(300)]
    n_tokens = sum(len(engine.model.tokenize("search_document: " + t)) for t in texts)
    before = engine.stats()
    embeddings.embed_documents(texts)
    steps = engine.stats().steps - before.steps
    # Packed greedily into 512-token steps: the fewest that hold them, or one more.
    assert math.ceil(n_tokens / 512) <= steps <= math.ceil(n_tokens / 512) + 1, (steps, n_tokens)


def test_threads_and_a_chat_model_beside(embeddings: LlamaCppEmbeddings, smollm_path: str) -> None:
    texts = [f"Thread {i} asks about " + _long_text(15 + i) for i in range(8)]
    expected = embeddings.embed_documents(texts)
    chat = ChatLlamaCpp(model_path=smollm_path, temperature=0, max_tokens=24)
    results: dict[int, list[float]] = {}
    answers: list[str] = []

    def embed(i: int) -> None:
        results[i] = embeddings.embed_documents([texts[i]])[0]

    threads = [threading.Thread(target=embed, args=(i,)) for i in range(8)]
    threads.append(threading.Thread(target=lambda: answers.append(str(chat.invoke("Say hello").content))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert answers and answers[0]
    for i in range(8):
        assert results[i] == pytest.approx(expected[i], abs=BATCH_TOLERANCE)


async def test_async_does_not_block_the_loop(embeddings: LlamaCppEmbeddings) -> None:
    texts = [_long_text(120) for _ in range(3)]
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    start = time.perf_counter()
    vectors = await embeddings.aembed_documents(texts)
    elapsed = time.perf_counter() - start
    done.set()
    await task
    assert len(vectors) == 3
    # The loop kept running while the texts were embedded (at least a tick per 50 ms, loosely).
    assert ticks >= min(5, int(elapsed / 0.05))
    assert await embeddings.aembed_query("hello") == pytest.approx(embeddings.embed_query("hello"), abs=1e-6)


def test_errors_name_the_problem(nomic_path: str) -> None:
    with pytest.raises(ValueError, match="unknown model_kwargs"):
        LlamaCppEmbeddings(model_path=nomic_path, model_kwargs={"n_gpu": 3})
    with pytest.raises(ValueError, match="vocab_only"):
        LlamaCppEmbeddings(model_path=nomic_path, vocab_only=True)
    with pytest.raises(ValueError):
        LlamaCppEmbeddings(model_path=nomic_path, pooling_type="none")  # type: ignore[arg-type]


def test_community_fields_accepted(nomic_path: str) -> None:
    # langchain_community's LlamaCppEmbeddings fields, as its docs use them.
    embeddings = LlamaCppEmbeddings(
        model_path=nomic_path, n_ctx=2048, n_parts=-1, seed=-1, f16_kv=False, logits_all=False,
        use_mlock=False, n_threads=2, n_batch=512, n_gpu_layers=None, verbose=False, device=None,
    )  # fmt: skip
    assert len(embeddings.embed_query("hello")) == 768


class NomicSuiteSettings:
    """The standard suites' settings: our class on the nomic model."""

    @pytest.fixture(autouse=True)
    def _model_path(self, nomic_path: str) -> None:
        type(self)._path = nomic_path

    @property
    def embeddings_class(self) -> type[LlamaCppEmbeddings]:
        return LlamaCppEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, str]:
        return {"model_path": self._path}


class TestNomicEmbeddingsUnit(NomicSuiteSettings, EmbeddingsUnitTests):
    pass


class TestNomicEmbeddingsIntegration(NomicSuiteSettings, EmbeddingsIntegrationTests):
    pass
