"""Images and audio in LangChain content blocks, as the bytes that llama.cpp's libmtmd decodes."""

from __future__ import annotations

import base64
import binascii
import os
from typing import Any
from urllib.parse import unquote, urlparse

import langchain_llamacpp._native as _native

# The native limit (kMaxMediaBytes), checked here too before a download or a file read goes further.
MAX_MEDIA_BYTES = _native.MAX_MEDIA_BYTES
FETCH_TIMEOUT_S = 30.0

MEDIA_BLOCK_TYPES = frozenset({"image", "image_url", "audio", "input_audio", "file"})


def _decode_base64(data: str, what: str) -> bytes:
    if len(data) > MAX_MEDIA_BYTES * 4 // 3 + 4:
        raise ValueError(f"{what} is over the limit of {MAX_MEDIA_BYTES} bytes")
    compact = "".join(data.split())  # MIME base64 wraps lines
    compact += "=" * (-len(compact) % 4)  # some encoders drop the padding
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"{what} is not valid base64: {e}") from None


def _read_file(path: str) -> bytes:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"media file not found: {path}")
    size = os.path.getsize(path)
    if size > MAX_MEDIA_BYTES:
        raise ValueError(f"media file {path} is {size} bytes, over the limit of {MAX_MEDIA_BYTES}")
    with open(path, "rb") as f:
        return f.read()


def _fetch(url: str) -> bytes:
    import httpx  # a dependency of langchain-core (through langsmith)

    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as response:
            response.raise_for_status()
            data = bytearray()
            for part in response.iter_bytes():
                data += part
                if len(data) > MAX_MEDIA_BYTES:
                    raise ValueError(f"the media at {url} is over the limit of {MAX_MEDIA_BYTES} bytes")
            return bytes(data)
    except httpx.HTTPError as e:
        raise ValueError(f"could not download the media at {url}: {e}") from e


def load_url(url: str) -> bytes:
    """The bytes a data URL, a file URL, a local path or an http(s) URL points to."""
    if url.startswith("data:"):
        header, sep, data = url.partition(",")
        if not sep:
            raise ValueError("a data URL without data")
        if header.endswith(";base64"):
            return _decode_base64(data, "the data URL")
        return unquote(data).encode("latin-1")
    scheme = urlparse(url).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(url)
    if scheme == "file":
        return _read_file(unquote(urlparse(url).path))
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        raise ValueError(f"unsupported media URL scheme {scheme!r}: use data:, file:, http(s): or a local path")
    return _read_file(url)


def load_block(block: dict[str, Any]) -> bytes:
    """The file in an image or audio content block, in any of the shapes LangChain passes.

    OpenAI chat completions (`image_url` with a URL or data URL, `input_audio`), LangChain's standard
    blocks (v1: `base64` / `url` / `path`; v0: `source_type` with `data` or `url`) and Anthropic's
    (`source` with `type` base64 or url); URLs may be data:, file:, http(s): or a local path.
    """
    kind = block.get("type")
    if kind == "image_url":
        ref = block.get("image_url")
        url = ref.get("url") if isinstance(ref, dict) else ref
        if not isinstance(url, str) or not url:
            raise ValueError("an image_url block needs a URL")
        return load_url(url)
    if kind == "input_audio":
        audio = block.get("input_audio") or {}
        return _decode_base64(str(audio.get("data", "")), "the audio data")
    source = block.get("source")
    if isinstance(source, dict):  # Anthropic
        if source.get("type") == "base64":
            return _decode_base64(str(source.get("data", "")), f"the {kind} data")
        if source.get("type") == "url":
            return load_url(str(source.get("url", "")))
        raise ValueError(f"unsupported {kind} source {source.get('type')!r}")
    source_type = block.get("source_type")
    if block.get("base64") or (source_type == "base64" and block.get("data")):
        return _decode_base64(str(block.get("base64") or block.get("data")), f"the {kind} data")
    if block.get("url"):
        return load_url(str(block["url"]))
    if block.get("path"):
        return _read_file(str(block["path"]))
    if block.get("file_id") or source_type == "id":
        raise ValueError(f"{kind} blocks that name a provider's file id cannot be read locally: pass the data")
    raise ValueError(f"the {kind} block has no data: give base64, url or path")
