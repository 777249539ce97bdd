"""`langchain-llamacpp serve` and `python -m langchain_llamacpp.server`: flags and a config file into an
`OpenAIAPI` served by uvicorn.

The config file (YAML, JSON or TOML) holds the models, each with any field of its class, and the server's
settings; flags add to it and win over it:

    models:                     # id -> ChatLlamaCpp fields; the first is the default
      qwen: {model_path: qwen2.5-coder-0.5b-instruct-q4_k_m.gguf, n_ctx: 8192, temperature: 0.2}
    embedding_models:           # id -> LlamaCppEmbeddings fields
      nomic: {model_path: nomic-embed-text-v1.5.f16.gguf}
    reranker_models:            # id -> LlamaCppReranker fields (POST /v1/rerank)
      bge: {model_path: bge-reranker-v2-m3-Q8_0.gguf}
    port: 8000
    max_queue: 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from langchain_llamacpp.server._api import DEFAULT_MAX_QUEUE, OpenAIAPI
from langchain_llamacpp.server._app import DEFAULT_MAX_BODY_BYTES, HTTPSettings, create_app

API_KEY_VARIABLE = "LANGCHAIN_LLAMACPP_API_KEY"
# Flags that set a field of every generating model (unless its config entry sets it).
_MODEL_FLAGS = ("n_ctx", "n_seq", "n_batch", "n_threads", "n_gpu_layers", "max_tokens", "timeout", "reasoning_budget")
_MODEL_KINDS = ("models", "embedding_models", "reranker_models")
_SERVER_KEYS = ("host", "port", "api_key", "max_body_bytes", "max_queue", "cors_origins")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="langchain-llamacpp serve",
        description="An OpenAI-compatible server (chat completions, completions, embeddings, rerank) on local GGUF "
        "models, answered by langchain-llamacpp's engine.",
    )
    models = p.add_argument_group("models")
    models.add_argument(
        "--model", action="append", default=[], metavar="[ID=]PATH",
        help="a chat/completion model (repeatable); its id is ID, or the file name without .gguf; the first "
        "is the default",
    )  # fmt: skip
    models.add_argument(
        "--embedding-model", action="append", default=[], metavar="[ID=]PATH", help="an embedding model (repeatable)"
    )
    models.add_argument(
        "--reranker-model", action="append", default=[], metavar="[ID=]PATH",
        help="a reranking model for POST /v1/rerank (repeatable)",
    )  # fmt: skip
    models.add_argument(
        "--mmproj", action="append", default=[], metavar="[ID=]PATH",
        help="the multimodal projector of model ID (default: the default model): messages may carry images",
    )  # fmt: skip
    models.add_argument("--config", metavar="FILE", help="a YAML, JSON or TOML file with models and settings")
    fields = p.add_argument_group("fields of every generating model (a config entry's own values win)")
    fields.add_argument("--n-ctx", type=int, help="context size in tokens, shared by the slots")
    fields.add_argument("--n-seq", type=int, help="sequence slots: requests decoded together (default 8)")
    fields.add_argument("--n-batch", type=int, help="tokens per decode step")
    fields.add_argument("--n-threads", type=int, help="CPU threads (default: the physical cores)")
    fields.add_argument("--n-gpu-layers", type=int, help="layers offloaded to the GPU (-1: all)")
    fields.add_argument("--max-tokens", type=int, help="tokens per reply when a request sets none (default 256)")
    fields.add_argument("--timeout", type=float, help="seconds a request may take, queue included")
    fields.add_argument(
        "--reasoning-budget",
        type=int,
        help="tokens of thinking at most, as llama-server's (-1: unbounded, the default); a request's "
        "reasoning_budget_tokens wins",
    )
    server = p.add_argument_group("server")
    server.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    server.add_argument("--port", type=int, help="port (default 8000)")
    server.add_argument(
        "--api-key", help=f"require 'Authorization: Bearer KEY' on every route but /health (or ${API_KEY_VARIABLE})"
    )
    server.add_argument("--max-body-bytes", type=int, help=f"largest request body (default {DEFAULT_MAX_BODY_BYTES})")
    server.add_argument(
        "--max-queue",
        type=int,
        help=f"requests waiting per model beyond its slots before a 503 (default {DEFAULT_MAX_QUEUE})",
    )
    server.add_argument(
        "--cors-origin",
        action="append",
        dest="cors_origins",
        metavar="ORIGIN",
        help="allow browser calls from ORIGIN (repeatable; none by default)",
    )
    server.add_argument("--verbose", action="store_true", help="llama.cpp's logs and an access log")
    return p


def _named(spec: str) -> tuple[str | None, str]:
    """`ID=PATH` -> (ID, PATH); a bare path -> (None, PATH). A path with '=' in it is taken whole only where
    it exists and what follows its first '=' does not."""
    name, sep, path = spec.partition("=")
    if sep and (os.path.exists(path) or not os.path.exists(spec)):
        return name, path
    return None, spec


def _model_id(path: str) -> str:
    return Path(path).name.removesuffix(".gguf")


def read_config(path: str) -> dict[str, Any]:
    """A config file by its extension: .yaml/.yml, .json or .toml."""
    text = Path(path).read_text()
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml  # type: ignore[import-untyped]  # the server extra

        loaded = yaml.safe_load(text)
    elif suffix == ".toml":
        import tomllib  # type: ignore[import-not-found,unused-ignore]  # Python 3.11+

        loaded = tomllib.loads(text)
    elif suffix == ".json":
        loaded = json.loads(text)
    else:
        raise SystemExit(f"config file {path}: use .yaml, .yml, .json or .toml")
    if not isinstance(loaded, dict):
        raise SystemExit(f"config file {path}: the top level must be a mapping")
    unknown = set(loaded) - {*_MODEL_KINDS, *_SERVER_KEYS}
    if unknown:
        raise SystemExit(f"config file {path}: unknown keys {sorted(unknown)}")
    return loaded


def settings(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """({models, embedding_models, reranker_models}, server settings) from the config file and the flags."""
    config = read_config(args.config) if args.config else {}
    kinds = {kind: {k: dict(v) for k, v in (config.get(kind) or {}).items()} for kind in _MODEL_KINDS}
    for kind, specs in zip(_MODEL_KINDS, (args.model, args.embedding_model, args.reranker_model), strict=True):
        for spec in specs:
            name, path = _named(spec)
            kinds[kind][name or _model_id(path)] = {"model_path": path}
    models = kinds["models"]
    for spec in args.mmproj:
        name, path = _named(spec)
        target = name or next(iter(models), None)
        if target not in models:
            raise SystemExit(f"--mmproj {spec}: no model {target!r} (give --model first, or ID=PATH)")
        models[target]["mmproj_path"] = path
    if args.reasoning_budget is not None and args.reasoning_budget < -1:
        raise SystemExit(f"--reasoning-budget must be -1 (unbounded) or 0 or more, not {args.reasoning_budget}")
    for flag in _MODEL_FLAGS:
        value = getattr(args, flag)
        if value is not None and not (flag == "reasoning_budget" and value == -1):
            for fields in models.values():
                fields.setdefault(flag, value)
    server = {key: config[key] for key in _SERVER_KEYS if key in config}
    server.update({key: getattr(args, key) for key in _SERVER_KEYS if getattr(args, key) is not None})
    server.setdefault("api_key", os.environ.get(API_KEY_VARIABLE) or None)
    if args.verbose:
        for fields in [fields for table in kinds.values() for fields in table.values()]:
            fields.setdefault("verbose", True)
    return kinds, server


def build(args: argparse.Namespace) -> tuple[OpenAIAPI, FastAPI, dict[str, Any]]:
    """The API and app for `args`, and the server settings (host, port)."""
    kinds, server = settings(args)
    if not any(kinds.values()):
        raise SystemExit("give a model: --model PATH, --embedding-model PATH, --reranker-model PATH or --config FILE")
    api = OpenAIAPI(
        kinds["models"],
        kinds["embedding_models"],
        reranker_models=kinds["reranker_models"],
        max_queue=server.get("max_queue", DEFAULT_MAX_QUEUE),
    )
    http = HTTPSettings(
        api_key=server.get("api_key"),
        max_body_bytes=server.get("max_body_bytes", DEFAULT_MAX_BODY_BYTES),
        cors_origins=tuple(server.get("cors_origins") or ()),
    )
    return api, create_app(api, http), server


def serve(argv: Sequence[str] | None = None) -> None:
    """Parse the flags, load the models and serve until interrupted."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # the console script's subcommand
        argv = argv[1:]
    args = parser().parse_args(argv)
    api, app, server = build(args)
    import uvicorn

    api.load()  # before listening: the first request does not wait for the weights
    uvicorn.run(
        app,
        host=server.get("host", "127.0.0.1"),
        port=server.get("port", 8000),
        log_level="info" if args.verbose else "warning",
        access_log=args.verbose,
    )


def main() -> None:
    """The `langchain-llamacpp` console script: `langchain-llamacpp serve ...`."""
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: langchain-llamacpp serve [--help] --model PATH ... (serve is the only command)")
    serve(sys.argv[2:])
