"""The server's `/v1/rerank` (llama-server's shape) on the tiny random-weight BERT reranker of
tests/unit/test_reranker.py: over HTTP the scores are the in-process `LlamaCppReranker.rerank()`'s."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from langchain_llamacpp import LlamaCppReranker
from langchain_llamacpp.server import BadRequest, OpenAIAPI, _cli, _requests, create_app
from tests.serving import serving
from tests.tiny_reranker import write_tiny_reranker

QUERY = "which river flows to the north sea"
DOCUMENTS = [
    "The Rhine flows from the Swiss Alps to the North Sea.",
    "Photosynthesis turns light into sugar.",
    "ok",
    "The Danube flows east to the Black Sea through ten countries.",
    "rivers " * 40,
]
RERANK = {"query": QUERY, "documents": DOCUMENTS}


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_reranker(tmp_path_factory.mktemp("server-rerank") / "reranker.gguf"))


@pytest.fixture(scope="module")
def api(reranker_path: str, tiny_model_path: str) -> OpenAIAPI:
    models = {"tiny": {"model_path": tiny_model_path, "n_ctx": 256, "n_seq": 1, "max_tokens": 4}}
    return OpenAIAPI(models, reranker_models={"rr": {"model_path": reranker_path, "n_threads": 2}})


@pytest.fixture(scope="module")
def client(api: OpenAIAPI) -> Iterator[httpx.Client]:
    with serving(create_app(api)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def expected(reranker_path: str) -> list[tuple[int, float]]:
    """The in-process ranking, from an instance of its own."""
    return LlamaCppReranker(model_path=reranker_path, n_threads=2).rerank(QUERY, DOCUMENTS)


def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_scores_over_http_are_the_in_process_ones(
    client: httpx.Client, api: OpenAIAPI, expected: list[tuple[int, float]]
) -> None:
    reply = _ok(client.post("/v1/rerank", json={**RERANK, "model": "rr"}))
    assert reply["object"] == "list" and reply["model"] == "rr"
    got = [(r["index"], r["relevance_score"]) for r in reply["results"]]
    assert [i for i, _ in got] == [i for i, _ in expected]
    assert [s for _, s in got] == pytest.approx([s for _, s in expected], rel=1e-6)
    assert all(set(r) == {"index", "relevance_score"} for r in reply["results"])
    # Usage: the tokens of the pairs as the model scored them (llama-server's tokens_evaluated).
    model = api._rerankers["rr"].reranker.load().model
    tokens = sum(len(model.rerank_tokens(QUERY, d)) for d in DOCUMENTS)
    assert reply["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    # llama-server's other routes; the model is the default where none is named; in-process the same.
    for path in ("/rerank", "/v1/reranking", "/reranking"):
        assert _ok(client.post(path, json=RERANK))["results"] == reply["results"]
    assert api.create_rerank(**RERANK)["results"] == reply["results"]


def test_top_n_documents_and_tei_shape(client: httpx.Client, expected: list[tuple[int, float]]) -> None:
    top = _ok(client.post("/v1/rerank", json={**RERANK, "top_n": 2, "return_documents": True}))["results"]
    assert [r["index"] for r in top] == [i for i, _ in expected[:2]]
    assert [r["document"] for r in top] == [{"text": DOCUMENTS[i]} for i, _ in expected[:2]]
    # TEI's shape (`texts`): a bare list with `score`, and `text` where return_text.
    tei = _ok(client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "return_text": True}))
    assert [(r["index"], r["text"]) for r in tei] == [(i, DOCUMENTS[i]) for i, _ in expected]
    assert [r["score"] for r in tei] == pytest.approx([s for _, s in expected], rel=1e-6)


def test_unknown_models_and_bad_fields(client: httpx.Client) -> None:
    unknown = client.post("/v1/rerank", json={**RERANK, "model": "bge"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    wrong_kind = client.post("/v1/rerank", json={**RERANK, "model": "tiny"})
    assert wrong_kind.status_code == 400 and "/v1/chat/completions" in wrong_kind.json()["error"]["message"]
    chat = client.post("/v1/chat/completions", json={"model": "rr", "messages": [{"role": "user", "content": "x"}]})
    assert chat.status_code == 400 and "/v1/rerank" in chat.json()["error"]["message"]
    too_long = client.post("/v1/rerank", json={"query": QUERY, "documents": ["word " * 600]})
    assert too_long.status_code == 400 and "truncate=True" in too_long.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"documents": DOCUMENTS}, "query"),
        ({"query": 3, "documents": DOCUMENTS}, "query"),
        ({"query": QUERY}, "documents"),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": "one"}, "documents"),
        ({"query": QUERY, "documents": [{"text": "x"}]}, "documents"),
        ({"query": QUERY, "texts": [1]}, "texts"),
        ({"query": QUERY, "documents": ["x"] * (_requests.MAX_RERANK_DOCUMENTS + 1)}, "documents"),
        ({**RERANK, "top_n": 0}, "top_n"),
        ({**RERANK, "top_n": True}, "top_n"),
        ({**RERANK, "return_documents": "yes"}, "return_documents"),
        ({**RERANK, "model": 1}, "model"),
    ],
)
def test_a_bad_rerank_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _requests.rerank_request(body)
    assert caught.value.param == param


def test_reranker_models_from_flags_and_config(tmp_path: Path, reranker_path: str, tiny_model_path: str) -> None:
    config = tmp_path / "server.json"
    config.write_text('{"reranker_models": {"bge": {"model_path": "/m/bge.gguf", "top_n": 5}}}')
    args = _cli.parser().parse_args(
        ["--config", str(config), "--reranker-model", "jina=/m/jina.gguf", "--reranker-model", "/m/other.gguf"]
    )
    kinds, _ = _cli.settings(args)
    assert kinds["reranker_models"] == {
        "bge": {"model_path": "/m/bge.gguf", "top_n": 5},
        "jina": {"model_path": "/m/jina.gguf"},
        "other": {"model_path": "/m/other.gguf"},
    }
    assert kinds["models"] == {}
    with pytest.raises(ValueError, match="used twice"):
        OpenAIAPI({"a": {"model_path": tiny_model_path}}, reranker_models={"a": {"model_path": reranker_path}})
