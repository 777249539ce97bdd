"""Scale-out on Ray, on a local instance with 2 CPUs: the server's app on two Ray Serve replicas answering
`ChatOpenAI` (examples/ray_serve.py), and `LlamaCppEmbeddings` as a Ray Data UDF giving the vectors of
`embed_documents` in-process (examples/ray_data_embeddings.py)."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")  # the `ray` extra; a missing install is reported as a skip with this reason
serve = pytest.importorskip("ray.serve")

from langchain_openai import ChatOpenAI  # noqa: E402

from langchain_llamacpp import LlamaCppEmbeddings  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))
import ray_data_embeddings  # noqa: E402
import ray_serve  # noqa: E402

pytestmark = pytest.mark.integration

BATCH_TOLERANCE = 3e-4  # tests/integration/test_embeddings.py: a text embedded in another batch shape


# Serve's controller kills a proxy that is not ready in 5 s, or that misses health checks of 10 s: a CI
# machine busy with other work can be that slow. Ray's processes inherit these from the driver's environment.
_PATIENT_SERVE = {"RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "120", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "60"}


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _PATIENT_SERVE.items():
            patch.setenv(name, value)
        patch.setenv("PYTHONPATH", str(EXAMPLES), prepend=os.pathsep)  # Ray Data's workers import the UDF's module
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            yield
        finally:
            ray.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_two_serve_replicas_answer_chatopenai(local_ray: None, smollm_path: str) -> None:
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    models: dict[str, Any] = {"smollm2": {"model_path": smollm_path, "n_threads": 1, "n_ctx": 1024, "n_seq": 2}}
    try:
        serve.run(ray_serve.application(models, replicas=2, cpus_per_replica=1), route_prefix="/")
        deployments = serve.status().applications["default"].deployments
        (deployment,) = deployments.values()
        assert deployment.replica_states == {"RUNNING": 2}
        chat = ChatOpenAI(
            model="smollm2",
            base_url=f"http://127.0.0.1:{port}/v1",
            api_key="none",
            max_retries=0,
            max_tokens=8,  # type: ignore[arg-type]
        )
        replies = chat.batch(["Name a color.", "Name a fruit.", "Name an animal.", "Name a city."])
        assert all(reply.content for reply in replies)
        assert all(reply.response_metadata["model_name"] == "smollm2" for reply in replies)
    finally:
        serve.shutdown()


def test_ray_data_vectors_equal_embed_documents(local_ray: None, nomic_path: str) -> None:
    texts = [f"Passage {i}: {'llama.cpp runs GGUF models. ' * (i % 4 + 1)}" for i in range(16)]
    embeddings = LlamaCppEmbeddings(model_path=nomic_path, n_threads=1)
    remote = ray_data_embeddings.embed_corpus(texts, embeddings, actors=2, batch_size=4)
    local = embeddings.embed_documents(texts)
    assert len(remote) == len(texts)
    for got, want in zip(remote, local, strict=True):
        assert got == pytest.approx(want, abs=BATCH_TOLERANCE)
