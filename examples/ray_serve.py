"""The OpenAI-compatible server on Ray Serve: N replicas, each with its own engine, behind one HTTP endpoint.

Ray Serve routes each request to a replica; each replica builds the same ASGI app as `langchain-llamacpp
serve` (`create_app`), with its own `OpenAIAPI` and engine, so a cluster serves one model from many machines.
Any OpenAI client (here LangChain's `ChatOpenAI`) uses the endpoint as it would use one server.

    pip install "langchain-llamacpp[server]" "ray[serve]"
    python examples/ray_serve.py qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from langchain_llamacpp.server import OpenAIAPI, create_app


def application(models: dict[str, dict[str, Any]], replicas: int = 2, cpus_per_replica: float = 1) -> Application:
    """A Serve application of `replicas` copies of the server for `models` (id -> `ChatLlamaCpp` fields)."""

    def build_app() -> FastAPI:  # runs in each replica: its own API and engine
        api = OpenAIAPI(models)
        api.load()
        return create_app(api)

    @serve.deployment(num_replicas=replicas, ray_actor_options={"num_cpus": cpus_per_replica})
    @serve.ingress(build_app)
    class LlamaCppServer:
        pass

    return LlamaCppServer.bind()  # type: ignore[attr-defined,no-any-return]  # added by serve.deployment


def main(model_path: str) -> None:
    import ray
    from langchain_openai import ChatOpenAI

    ray.init(num_cpus=2)
    # One thread per replica: two replicas share the two CPUs given to Ray.
    serve.run(application({"local": {"model_path": model_path, "n_threads": 1}}), route_prefix="/")
    chat = ChatOpenAI(model="local", base_url="http://127.0.0.1:8000/v1", api_key="none", max_tokens=32)
    print(chat.batch(["Name a color.", "Name a fruit.", "Name an animal.", "Name a city."]))
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
