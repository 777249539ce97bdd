"""The OpenAI-compatible server without a real model: request bodies read into the classes' arguments (each
bad field a 400 naming it), the command line and config file, and the HTTP layer's rules (API key, body
limit, queue limit, CORS, OpenAI's error shape) on the tiny random-weight model."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from langchain_llamacpp.server import APIError, BadRequest, HTTPSettings, OpenAIAPI, _cli, _requests, create_app
from tests.serving import serving

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


# -- request bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": ["user"], "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": ["text"]}]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "assistant", "tool_calls": [[1]]}]}, "messages[0].tool_calls[0]"),
        ({"messages": [{"role": "assistant", "tool_calls": {"id": 1}}]}, "messages[0].tool_calls"),
        ({**CHAT, "model": 3}, "model"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "temperature": -1}, "temperature"),
        ({**CHAT, "top_p": True}, "top_p"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_tokens": 2**40}, "max_tokens"),
        ({**CHAT, "seed": 2**70}, "seed"),
        ({**CHAT, "max_completion_tokens": "9"}, "max_completion_tokens"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "n": 99}, "n"),
        ({**CHAT, "stop": [""]}, "stop"),
        ({**CHAT, "stop": 5}, "stop"),
        ({**CHAT, "stream_options": {"include_usage": True}}, "stream_options"),
        ({**CHAT, "logit_bias": {"x": 1}}, "logit_bias"),
        ({**CHAT, "top_logprobs": 3}, "top_logprobs"),
        ({**CHAT, "logprobs": True, "top_logprobs": 50}, "top_logprobs"),
        ({**CHAT, "tools": [{"type": "function"}]}, "tools[0]"),
        ({**CHAT, "tools": [{"type": "function", "function": {"name": 1}}]}, "tools[0].function.name"),
        ({**CHAT, "tool_choice": "required"}, "tool_choice"),
        ({**CHAT, "response_format": {"type": "xml"}}, "response_format"),
        ({**CHAT, "response_format": {"type": "json_schema", "json_schema": {}}}, "response_format"),
        ({**CHAT, "reasoning_format": "loud"}, "reasoning_format"),
        ({**CHAT, "dry_sequence_breakers": ["x"] * 33}, "dry_sequence_breakers"),
        ({**CHAT, "xtc_probability": 2}, "xtc_probability"),
        ({**CHAT, "reasoning_budget_tokens": -2}, "reasoning_budget_tokens"),
        ({**CHAT, "thinking_budget_tokens": "16"}, "thinking_budget_tokens"),
    ],
)
def test_a_bad_chat_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _requests.chat_request(body)
    assert caught.value.param == param
    assert caught.value.body()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "/etc/passwd", "http://169.254.169.254/latest", "https://example.com/a.png"]
)
def test_the_server_reads_no_file_and_fetches_no_url_a_client_names(url: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    with pytest.raises(BadRequest, match="inline"):
        _requests.chat_request(body)


def test_chat_fields_become_the_classes_options() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}, "strict": True}]
    request = _requests.chat_request(
        {
            **CHAT,
            "stop": "END",
            "max_completion_tokens": 7,
            "seed": 3,
            "n": 2,
            "tools": tools,
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "logprobs": True,
            "top_logprobs": 2,
            "user": "ignored",
            "top_k": 5,
            "dry_multiplier": 0.8,
            "dry_sequence_breakers": ["\n"],
            "xtc_probability": 0.5,
            "top_n_sigma": 1.0,
        }
    )
    assert request.stop == ["END"] and request.n == 2
    assert request.options["dry_multiplier"] == 0.8 and request.options["dry_sequence_breakers"] == ["\n"]
    assert request.options["xtc_probability"] == 0.5 and request.options["top_n_sigma"] == 1.0
    assert request.options["max_tokens"] == 7 and request.options["logprobs"] == 2 and request.options["top_k"] == 5
    assert request.options["tools"] == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert [request.choice_options(i)["seed"] for i in range(2)] == [3, 4]  # each choice its own sample
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    structured = _requests.chat_request(
        {**CHAT, "response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}
    )
    assert structured.options["json_schema"] == schema
    assert _requests.chat_request({**CHAT, "response_format": {"type": "json_object"}}).options["json_schema"] == {
        "type": "object"
    }


def test_a_reasoning_budget_as_llama_server_reads_it() -> None:
    def budget(**fields: Any) -> Any:
        return _requests.chat_request({**CHAT, **fields}).options.get("reasoning_budget", "unset")

    assert budget(reasoning_budget_tokens=16) == 16
    assert budget(thinking_budget_tokens=0) == 0
    assert budget(reasoning_budget_tokens=8, thinking_budget_tokens=99) == 8  # llama-server reads this one first
    assert budget(reasoning_budget_tokens=-1) == "unset"  # -1: the model's own (the server's --reasoning-budget)
    assert budget() == "unset"
    for flag, expected in ((["--reasoning-budget", "32"], 32), (["--reasoning-budget", "-1"], None)):
        kinds, _ = _cli.settings(_cli.parser().parse_args(["--model", "/m/a.gguf", *flag]))
        assert kinds["models"]["a"].get("reasoning_budget") == expected
    with pytest.raises(SystemExit, match="reasoning-budget"):
        _cli.settings(_cli.parser().parse_args(["--model", "/m/a.gguf", "--reasoning-budget", "-5"]))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": "x", "logprobs": 99}, "logprobs"),
        ({"prompt": "x", "best_of": 3}, "best_of"),
        ({"prompt": ["a", "b", "c", "d"], "n": 5}, "n"),
        ({"prompt": "x", "echo": "yes"}, "echo"),
    ],
)
def test_a_bad_completion_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _requests.completion_request(body)
    assert caught.value.param == param


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "input"), ({"input": [[1, 2]]}, "input"), ({"input": "x", "encoding_format": "hex"}, "encoding_format")],
)
def test_a_bad_embedding_field_is_a_400_naming_it(body: dict[str, Any], param: str) -> None:
    with pytest.raises(BadRequest) as caught:
        _requests.embedding_request(body)
    assert caught.value.param == param


# -- the command line and the config file ----------------------------------------------------------------


def test_help_lists_the_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "langchain_llamacpp.server", "--help"], capture_output=True, text=True, check=True
    ).stdout
    flags = "--model --embedding-model --mmproj --host --port --api-key --config --n-ctx --n-seq --n-threads"
    for flag in [*flags.split(), "--n-gpu-layers", "--max-body-bytes", "--max-queue", "--cors-origin"]:
        assert flag in out


@pytest.mark.parametrize("suffix", [".yaml", ".json", ".toml"])
def test_config_file_and_flags(tmp_path: Path, suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {
        "models": {"qwen": {"model_path": "/m/qwen.gguf", "n_ctx": 8192}},
        "embedding_models": {"nomic": {"model_path": "/m/nomic.gguf"}},
        "port": 9000,
        "max_queue": 3,
    }
    path = tmp_path / f"server{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(config))
    elif suffix == ".yaml":
        import yaml

        path.write_text(yaml.safe_dump(config))
    else:
        path.write_text(
            'port = 9000\nmax_queue = 3\n[models.qwen]\nmodel_path = "/m/qwen.gguf"\nn_ctx = 8192\n'
            '[embedding_models.nomic]\nmodel_path = "/m/nomic.gguf"\n'
        )
    monkeypatch.setenv(_cli.API_KEY_VARIABLE, "from-env")
    args = _cli.parser().parse_args(
        [
            "--config",
            str(path),
            "--model",
            "/m/SmolLM2.gguf",
            "--mmproj",
            "qwen=/m/mmproj.gguf",
            "--n-ctx",
            "2048",
            "--port",
            "8123",
        ]
    )
    kinds, server = _cli.settings(args)
    models, embedding = kinds["models"], kinds["embedding_models"]
    assert list(models) == ["qwen", "SmolLM2"]  # the config's first: the default
    assert models["qwen"] == {"model_path": "/m/qwen.gguf", "n_ctx": 8192, "mmproj_path": "/m/mmproj.gguf"}
    assert models["SmolLM2"] == {"model_path": "/m/SmolLM2.gguf", "n_ctx": 2048}
    assert embedding == {"nomic": {"model_path": "/m/nomic.gguf"}}
    assert server == {"port": 8123, "max_queue": 3, "api_key": "from-env"}


def test_a_config_file_with_unknown_keys_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "server.json"
    path.write_text(json.dumps({"modles": {}}))
    with pytest.raises(SystemExit, match="unknown keys"):
        _cli.read_config(str(path))


# -- HTTP, on the tiny random-weight model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def api(tiny_model_path: str) -> OpenAIAPI:
    # One slot and no queue beyond it: a second request while one runs is a 503.
    models = {"tiny": {"model_path": tiny_model_path, "n_ctx": 256, "n_seq": 1, "seed": 1, "max_tokens": 8}}
    return OpenAIAPI(models, max_queue=0)


@pytest.fixture(scope="module")
def server(api: OpenAIAPI) -> Iterator[str]:
    with serving(create_app(api, HTTPSettings(api_key="s3cret", max_body_bytes=4096))) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"Authorization": "Bearer s3cret"}, timeout=60) as c:
        yield c


def _error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def test_every_route_but_health_needs_the_key(server: str) -> None:
    assert httpx.get(f"{server}/health").json() == {"status": "ok"}
    for path in ("/v1/models", "/metrics", "/v1/nowhere"):
        assert _error(httpx.get(server + path), 401)["code"] == "invalid_api_key"
        assert httpx.get(server + path, headers={"Authorization": "Bearer s3cre"}).status_code == 401
    assert _error(httpx.post(f"{server}/v1/chat/completions", json=CHAT), 401)
    assert (
        httpx.get(f"{server}/v1/models", headers={"Authorization": "Bearer s3cret"}).json()["data"][0]["id"] == "tiny"
    )


def test_bad_requests_are_400s_in_openai_shape(client: httpx.Client) -> None:
    assert _error(client.post("/v1/chat/completions", content=b"{not json"), 400)["message"].startswith(
        "the request body is not valid JSON"
    )
    assert _error(client.post("/v1/chat/completions", json=[1]), 400)
    assert _error(client.post("/v1/chat/completions", json={**CHAT, "temperature": -2}), 400)["param"] == "temperature"
    # What the engine refuses is a 400 too: a grammar llama.cpp cannot parse, a prompt past the context.
    assert _error(client.post("/v1/chat/completions", json={**CHAT, "grammar": "root ::= ("}), 400)
    long = {"messages": [{"role": "user", "content": "word " * 400}]}
    assert _error(client.post("/v1/chat/completions", json=long), 400)
    assert _error(client.post("/v1/completions", json={"prompt": "x", "suffix": "y"}), 400)  # not a FIM model


def test_unknown_models_routes_and_methods(client: httpx.Client) -> None:
    error = _error(client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-4o"}), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert _error(client.get("/v1/models/gpt-4o"), 404)["code"] == "model_not_found"
    assert _error(client.get("/v1/nowhere"), 404)
    assert _error(client.get("/v1/chat/completions"), 405)
    assert _error(client.post("/v1/embeddings", json={"input": "x", "model": "tiny"}), 400)["param"] == "model"


def test_a_body_over_the_limit_is_a_413(client: httpx.Client) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 5000}]}
    assert _error(client.post("/v1/chat/completions", json=big), 413)
    # Without a Content-Length the body is still read no further than the limit.
    chunks = iter([b'{"messages": [{"role": "user", "content": "', b"x" * 5000, b'"}]}'])
    assert _error(client.post("/v1/chat/completions", content=chunks), 413)


def test_a_full_queue_is_a_503_with_retry_after(api: OpenAIAPI, client: httpx.Client) -> None:
    # A stream that is not read holds its place (the in-process API shares the server's queue).
    first = api.create_chat_completion(**CHAT, max_tokens=200, ignore_eos=True, stream=True)
    assert isinstance(first, Iterator)
    next(first)
    busy = client.post("/v1/chat/completions", json=CHAT)
    assert _error(busy, 503)["code"] == "server_overloaded"
    assert busy.headers["Retry-After"] == "1"
    assert 'llamacpp_requests_in_flight{model="tiny"} 1' in client.get("/metrics").text
    first.close()  # type: ignore[attr-defined]  # a generator
    # The stream closed early: its request is cancelled and its place given back.
    reply = client.post("/v1/chat/completions", json=CHAT)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"


def test_streaming_is_server_sent_events(client: httpx.Client) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1
    assert "usage" not in chunks[-2]
    # Without include_usage the last chunk of the choice carries it (as llama-server's does).
    with client.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        plain = [json.loads(line[6:]) for line in response.iter_lines() if line and line != "data: [DONE]"]
    assert plain[-1]["choices"][0]["finish_reason"] and plain[-1]["usage"]["completion_tokens"] >= 1
    assert all("usage" not in c for c in plain[:-1])


def test_metrics_are_prometheus_text(client: httpx.Client) -> None:
    client.post("/v1/completions", json={"prompt": "a"})
    text = client.get("/metrics").text
    for family in ("requests_total", "prompt_tokens_total", "completion_tokens_total", "queue_length", "slots_busy"):
        assert f"# TYPE llamacpp_{family} " in text
    assert 'llamacpp_requests_total{endpoint="completions",status="200"}' in text


def test_cors_only_for_the_origins_given(api: OpenAIAPI, server: str) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    assert (
        "access-control-allow-origin" not in httpx.options(f"{server}/v1/chat/completions", headers=preflight).headers
    )
    with serving(create_app(api, HTTPSettings(cors_origins=["https://app.example"]))) as other:
        allowed = httpx.options(f"{other}/v1/chat/completions", headers=preflight)
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        refused = httpx.options(f"{other}/v1/chat/completions", headers={**preflight, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in refused.headers


def test_the_in_process_api_returns_the_same_shapes(api: OpenAIAPI) -> None:
    reply = api.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert isinstance(reply, dict) and reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] <= 3
    chunks = list(api.create_completion(prompt="a", max_tokens=3, stream=True, echo=True))
    assert chunks[0]["choices"][0]["text"] == "a" and chunks[-1]["choices"][0]["finish_reason"] is not None
    with pytest.raises(BadRequest):
        api.create_chat_completion(messages=[])


def _deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}}


@pytest.mark.parametrize(
    "fields",
    [
        _schema({"type": 5}),
        _schema(_deep_schema(200)),
        _schema({"$ref": "#/nowhere"}),
        {"grammar": "root ::= [a-"},
        {"logit_bias": {"99999999": 1}},
        {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"function": {"name": "g"}}},
        {"messages": [{"role": "user", "content": "\ud800"}]},
        {"messages": [{"role": "tool", "content": "a result for no call"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}
            ]
        },
    ],
    ids=[
        "schema-type",
        "deep-schema",
        "bad-ref",
        "grammar",
        "token-id",
        "tool-choice",
        "surrogate",
        "tool-message",
        "image",
    ],
)
def test_what_the_engine_refuses_is_a_400(api: OpenAIAPI, fields: dict[str, Any]) -> None:
    with pytest.raises(APIError) as caught:
        api.create_chat_completion({**CHAT, **fields})
    assert caught.value.status == 400, caught.value.message


def test_model_ids_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _cli._named("qwen=models/q.gguf") == ("qwen", "models/q.gguf")
    assert _cli._named("models/q.gguf") == (None, "models/q.gguf")
    (tmp_path / "a=b.gguf").touch()  # a file whose name has '=' in it is taken whole...
    assert _cli._named("a=b.gguf") == (None, "a=b.gguf")
    (tmp_path / "b.gguf").touch()  # ...unless what follows the '=' names a file too
    assert _cli._named("a=b.gguf") == ("a", "b.gguf")


def test_without_the_server_extra_the_import_error_names_it() -> None:
    code = "import sys; sys.modules['orjson'] = sys.modules['uvicorn'] = None; import langchain_llamacpp.server"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert 'needs uvicorn, orjson: pip install "langchain-llamacpp[server]"' in result.stderr
