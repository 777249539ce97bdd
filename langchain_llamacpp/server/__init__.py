"""An OpenAI-compatible server on the package's own classes, and the same calls in-process.

    langchain-llamacpp serve --model qwen=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python -m langchain_llamacpp.server --model ... --embedding-model ...

`OpenAIAPI` is the in-process API (OpenAI's request fields in, OpenAI's response dicts and chunks out);
`create_app` serves one over HTTP (an ASGI app: run it with uvicorn, mount it, or deploy it on Ray Serve).
Needs the `server` extra: `pip install "langchain-llamacpp[server]"`.
"""

from langchain_llamacpp.server._api import OpenAIAPI
from langchain_llamacpp.server._app import HTTPSettings, create_app
from langchain_llamacpp.server._errors import APIError, BadRequest, NotFound, Overloaded

__all__ = ["APIError", "BadRequest", "HTTPSettings", "NotFound", "OpenAIAPI", "Overloaded", "create_app"]
