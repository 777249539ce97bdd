"""An OpenAI-compatible server on the package's own classes, and the same calls in-process.

    langchain-llamacpp serve --model qwen=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    python -m langchain_llamacpp.server --model ... --embedding-model ...

`OpenAIAPI` is the in-process API (OpenAI's request fields in, OpenAI's response dicts and chunks out);
`create_app` serves one over HTTP (an ASGI app: run it with uvicorn, mount it, or deploy it on Ray Serve).
Needs the `server` extra: `pip install "langchain-llamacpp[server]"`.
"""

import importlib.util


def _require_extra() -> None:
    missing = [name for name in ("fastapi", "uvicorn", "orjson") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(
            f'langchain_llamacpp.server needs {", ".join(missing)}: pip install "langchain-llamacpp[server]"'
        )


_require_extra()

from langchain_llamacpp.server._api import OpenAIAPI  # noqa: E402  # after the check, whose message names the extra
from langchain_llamacpp.server._app import HTTPSettings, create_app  # noqa: E402
from langchain_llamacpp.server._errors import APIError, BadRequest, NotFound, Overloaded  # noqa: E402

__all__ = ["APIError", "BadRequest", "HTTPSettings", "NotFound", "OpenAIAPI", "Overloaded", "create_app"]
