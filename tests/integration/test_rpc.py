"""llama.cpp's RPC backend on loopback: layers offloaded to an rpc-server built from the vendored tree."""

from __future__ import annotations

import gc
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native
from tests.llama_tools import llama_tool

pytestmark = pytest.mark.skipif(not native.rpc_available(), reason="built without GGML_RPC")

PROMPT = "The capital of France is"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rpc_server() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [str(llama_tool("ggml-rpc-server")), "-H", "127.0.0.1", "-p", str(port), "-t", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:  # listening? (a connection that sends nothing is dropped by the server)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("rpc-server did not start") from None
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    gc.collect()  # models on the server are freed while it still answers
    proc.terminate()
    proc.wait(timeout=10)


def test_all_layers_on_the_server_give_the_local_greedy_output(smollm_path: str, rpc_server: str) -> None:
    # The server computes with its CPU backend's plain kernels: locally the same (no repacked weights).
    local = LlamaCpp(model_path=smollm_path, temperature=0, max_tokens=32, model_kwargs={"repack": False})
    remote = LlamaCpp(model_path=smollm_path, temperature=0, max_tokens=32, rpc_servers=[rpc_server])
    expected = local.invoke(PROMPT)
    assert remote.invoke(PROMPT) == expected
    assert "".join(remote.stream(PROMPT)) == expected
    assert remote.batch([PROMPT, PROMPT]) == [expected, expected]


def test_chat_on_the_server_and_a_comma_separated_list(smollm_path: str, rpc_server: str) -> None:
    common = {"model_path": smollm_path, "temperature": 0, "max_tokens": 24}
    local = ChatLlamaCpp(model_kwargs={"repack": False}, **common).invoke("Name a fruit.")
    remote = ChatLlamaCpp(rpc_servers=rpc_server, n_gpu_layers=-1, **common).invoke("Name a fruit.")
    assert remote.content == local.content


def test_an_unreachable_server_is_a_clear_error(smollm_path: str) -> None:
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*cannot connect"):
        LlamaCpp(model_path=smollm_path, rpc_servers=[f"127.0.0.1:{port}"]).invoke("x")
    assert time.monotonic() - start < 10


def _serve(handler: str) -> tuple[str, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    def run() -> None:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            if handler == "http":
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            else:  # silent: reads and never answers
                conn.recv(64)
                time.sleep(8)

    threading.Thread(target=run, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}", listener


@pytest.mark.parametrize(("handler", "message"), [("http", "not a llama.cpp rpc-server"), ("silent", "no answer")])
def test_a_server_that_is_not_an_rpc_server_is_a_clear_error(smollm_path: str, handler: str, message: str) -> None:
    # ggml's own client would abort the process here (or wait forever): the handshake is checked first.
    endpoint, listener = _serve(handler)
    with listener:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match=message):
            LlamaCpp(model_path=smollm_path, rpc_servers=[endpoint]).invoke("x")
        assert time.monotonic() - start < 10


@pytest.mark.parametrize("endpoint", ["localhost", "127.0.0.1:", "127.0.0.1:99999", ":50052"])
def test_a_malformed_endpoint_is_named(smollm_path: str, endpoint: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        LlamaCpp(model_path=smollm_path, rpc_servers=[endpoint]).invoke("x")
