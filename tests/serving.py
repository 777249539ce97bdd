"""The OpenAI-compatible server (`langchain_llamacpp.server`) run for a test: uvicorn in a thread, on a free
loopback port, stopped at the end."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served on 127.0.0.1 at a free port; yields its base URL (`http://127.0.0.1:PORT`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


API_KEY = "test-key"


def model_settings(smollm_path: str, qwen_path: str, nomic_path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The server's models in the tests: SmolLM2 (the default, fast chat), Qwen2.5-Coder-0.5B (tools and
    structured output, with the settings of tests/integration/test_standard.py) and nomic-embed-text."""
    models = {
        "smollm2": {"model_path": smollm_path, "n_ctx": 4096, "n_seq": 8, "temperature": 0, "max_tokens": 64},
        "qwen": {"model_path": qwen_path, "n_ctx": 4096, "n_seq": 4, "seed": 7, "temperature": 0, "max_tokens": 256},
    }
    return models, {"nomic": {"model_path": nomic_path}}
