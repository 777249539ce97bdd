"""Image and audio content blocks, in every shape LangChain passes them, to the bytes the engine decodes."""

from __future__ import annotations

import base64
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from langchain_llamacpp._media import MAX_MEDIA_BYTES, load_block, load_url
from langchain_llamacpp._messages import MediaFiles, convert_messages_to_llamacpp

DATA = b"\x89PNG\r\n\x1a\n not really an image, but bytes to carry"
B64 = base64.b64encode(DATA).decode()


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "picture.png"
    path.write_bytes(DATA)
    return path


@pytest.fixture
def server(image_file: Path) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/picture.png":
                self.send_response(200)
                self.send_header("Content-Length", str(len(DATA)))
                self.end_headers()
                self.wfile.write(DATA)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_block_shape_gives_the_bytes(image_file: Path, server: str) -> None:
    blocks = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},  # OpenAI
        {"type": "image_url", "image_url": f"data:image/png;base64,{B64}"},
        {"type": "image_url", "image_url": {"url": f"{server}/picture.png"}},
        {"type": "image", "base64": B64, "mime_type": "image/png"},  # LangChain v1
        {"type": "image", "url": f"{server}/picture.png"},
        {"type": "image", "url": image_file.as_uri()},
        {"type": "image", "path": str(image_file)},
        {"type": "image", "source_type": "base64", "data": B64, "mime_type": "image/png"},  # LangChain v0
        {"type": "image", "source_type": "url", "url": str(image_file)},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},  # Anthropic
        {"type": "image_url", "image_url": {"url": str(image_file)}},  # a local path
        {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}},
        {"type": "audio", "base64": B64, "mime_type": "audio/wav"},
    ]
    for block in blocks:
        assert load_block(block) == DATA, block


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ({"type": "image"}, "has no data"),
        ({"type": "image", "file_id": "file-123"}, "file id"),
        ({"type": "image_url", "image_url": {}}, "needs a URL"),
        ({"type": "image", "base64": "!!!"}, "not valid base64"),
        ({"type": "image", "url": "ftp://example.com/a.png"}, "unsupported media URL scheme 'ftp'"),
        ({"type": "image", "url": "data:image/png;base64"}, "without data"),
    ],
)
def test_bad_blocks_say_what_is_wrong(block: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_block(block)


def test_missing_file_and_failed_download(tmp_path: Path, server: str) -> None:
    with pytest.raises(FileNotFoundError, match="media file not found"):
        load_url(str(tmp_path / "nope.png"))
    with pytest.raises(ValueError, match=r"could not download the media at .*404"):
        load_url(f"{server}/nope.png")


def test_too_large(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(MAX_MEDIA_BYTES + 1)
    with pytest.raises(ValueError, match="over the limit"):
        load_url(str(big))


def test_markers_replace_media_in_order() -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    media = MediaFiles("<__media__>")
    messages = [
        HumanMessage(
            content=[
                {"type": "text", "text": "Compare "},
                {"type": "image", "base64": B64},
                {"type": "text", "text": " and "},
                {"type": "image", "base64": base64.b64encode(b"other").decode()},
            ]
        ),
        ToolMessage(content=[{"type": "image", "base64": B64}], tool_call_id="call_1"),
    ]
    converted = convert_messages_to_llamacpp(messages, media)
    assert converted[0]["content"] == "Compare <__media__> and <__media__>"
    assert converted[1]["content"] == "<__media__>"
    assert media.files == [DATA, b"other", DATA]


def test_media_without_a_projector_names_the_fix() -> None:
    from langchain_core.messages import HumanMessage

    with pytest.raises(ValueError, match="needs a multimodal model: pass mmproj_path"):
        convert_messages_to_llamacpp([HumanMessage(content=[{"type": "image", "base64": B64}])])
