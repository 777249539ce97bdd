"""Image input through llama.cpp's libmtmd, on a tiny random-weight LLaVA-style model (tests/tiny_vision.py).

No vision model ships in a registry package, so the reference is llama.cpp's own `llama-mtmd-cli`, built
from the vendored tree: on the same files, image and prompt, our greedy output must be its output.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, HumanMessage

from langchain_llamacpp import ChatLlamaCpp
from tests.llama_tools import llama_mtmd_cli
from tests.tiny_vision import N_IMAGE_TOKENS, write_test_png

VENDOR = Path(__file__).resolve().parents[2] / "vendor" / "llama.cpp"
JPEG = VENDOR / "tools" / "mtmd" / "test-1.jpeg"
PROMPT = "Describe the image."
N_PREDICT = 24


def _chat(tiny_vision: tuple[str, str], **kwargs: object) -> ChatLlamaCpp:
    text, mmproj = tiny_vision
    settings: dict[str, object] = {"temperature": 0, "max_tokens": N_PREDICT, "ignore_eos": True, "verbose": False}
    return ChatLlamaCpp(model_path=text, mmproj_path=mmproj, **{**settings, **kwargs})


def _ask(image: Path | bytes, prompt: str = PROMPT) -> HumanMessage:
    data = image if isinstance(image, bytes) else image.read_bytes()
    mime = "image/jpeg" if data.startswith(b"\xff\xd8") else "image/png"
    block = {"type": "image", "base64": base64.b64encode(data).decode(), "mime_type": mime}
    return HumanMessage(content=[block, {"type": "text", "text": prompt}])


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_png(tmp_path_factory.mktemp("images") / "gradient.png", 48, 40, seed=1)


def test_greedy_output_equals_llama_mtmd_cli(tiny_vision: tuple[str, str], png: Path) -> None:
    chat = _chat(tiny_vision)
    for image in (JPEG, png):
        ours = chat.invoke([_ask(image)])
        theirs = llama_mtmd_cli(*tiny_vision, str(image), PROMPT, n_predict=N_PREDICT)
        assert ours.content == theirs, image.name
        assert ours.usage_metadata is not None
        assert ours.usage_metadata["output_tokens"] == N_PREDICT
    assert chat.invoke([_ask(JPEG)]).content != chat.invoke([_ask(png)]).content  # the image matters


def test_every_block_shape_and_source_gives_the_same_answer(tiny_vision: tuple[str, str], png: Path) -> None:
    chat = _chat(tiny_vision, max_tokens=6)
    b64 = base64.b64encode(png.read_bytes()).decode()
    shapes = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
        {"type": "image", "base64": b64, "mime_type": "image/png"},
        {"type": "image", "source_type": "base64", "data": b64, "mime_type": "image/png"},
        {"type": "image", "url": png.as_uri()},
        {"type": "image", "path": str(png)},
        {"type": "image_url", "image_url": {"url": str(png)}},
    ]
    answers = {
        shape["type"] + str(i): chat.invoke([HumanMessage(content=[shape, {"type": "text", "text": PROMPT}])]).content
        for i, shape in enumerate(shapes)
    }
    assert len(set(answers.values())) == 1, answers


def test_next_turn_reuses_the_image_kv(tiny_vision: tuple[str, str]) -> None:
    chat = _chat(tiny_vision, max_tokens=4)
    first = chat.invoke([_ask(JPEG)])
    follow_up = [_ask(JPEG), first, HumanMessage(content="And the colours?")]
    second = chat.invoke(follow_up)
    assert second.usage_metadata is not None
    cached = second.usage_metadata.get("input_token_details", {}).get("cache_read", 0)
    assert cached > N_IMAGE_TOKENS  # the turn's prefix, image included, came from the cache
    stats = chat.load().stats()
    assert stats.media_ms > 0


def test_another_image_in_the_same_place_is_not_reused(tiny_vision: tuple[str, str], png: Path) -> None:
    # Same text, same number of image tokens, different pixels: the cached image must not count.
    chat = _chat(tiny_vision, max_tokens=4)
    chat.invoke([_ask(JPEG)])
    fresh = _chat(tiny_vision, max_tokens=4, n_seq=2)  # another engine: nothing cached
    other = chat.invoke([_ask(png)])
    assert other.content == fresh.invoke([_ask(png)]).content
    again = chat.invoke([_ask(png)])
    # The text before the image is reused each time, the image only where it is the same one.
    assert _cache_read(other) > 0
    assert _cache_read(again) - _cache_read(other) >= N_IMAGE_TOKENS


def _cache_read(reply: AIMessage) -> int:
    assert reply.usage_metadata is not None
    return reply.usage_metadata.get("input_token_details", {}).get("cache_read", 0)


def test_several_images_in_one_message(tiny_vision: tuple[str, str], png: Path) -> None:
    chat = _chat(tiny_vision, max_tokens=4)
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in (JPEG, png)]
    message = HumanMessage(
        content=[
            {"type": "text", "text": "Compare"},
            {"type": "image", "base64": b64[0], "mime_type": "image/jpeg"},
            {"type": "text", "text": "with"},
            {"type": "image", "base64": b64[1], "mime_type": "image/png"},
        ]
    )
    reply = chat.invoke([message])
    assert isinstance(reply, AIMessage)
    assert reply.usage_metadata is not None
    assert reply.usage_metadata["input_tokens"] > 2 * N_IMAGE_TOKENS
    swapped = HumanMessage(content=[message.content[0], message.content[3], message.content[2], message.content[1]])
    assert chat.invoke([swapped]).content != reply.content


def test_streaming_and_async_with_an_image(tiny_vision: tuple[str, str]) -> None:
    import asyncio

    chat = _chat(tiny_vision, max_tokens=8)
    expected = chat.invoke([_ask(JPEG)]).content
    assert "".join(str(c.content) for c in chat.stream([_ask(JPEG)])) == expected
    assert asyncio.run(chat.ainvoke([_ask(JPEG)])).content == expected


def test_bad_images_and_settings_are_clear_errors(tiny_vision: tuple[str, str], tmp_path: Path) -> None:
    text = tiny_vision[0]
    chat = _chat(tiny_vision, max_tokens=2)
    with pytest.raises(ValueError, match="could not be decoded"):
        chat.invoke([_ask(b"definitely not an image")])
    # A PNG header that claims 10000 x 8000 pixels (240 MB decoded): refused before decoding.
    huge = bytearray(write_test_png(tmp_path / "h.png", 8, 8, seed=0).read_bytes())
    huge[16:24] = (10_000).to_bytes(4, "big") + (8_000).to_bytes(4, "big")
    with pytest.raises(ValueError, match="10000x8000 pixels, over the limit"):
        chat.invoke([_ask(bytes(huge))])
    with pytest.raises(ValueError, match="needs a multimodal model: pass mmproj_path"):
        ChatLlamaCpp(model_path=text, verbose=False).invoke([_ask(JPEG)])
    with pytest.raises(FileNotFoundError, match="mmproj"):
        ChatLlamaCpp(model_path=text, mmproj_path=str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match="failed to load the projector"):
        ChatLlamaCpp(model_path=text, mmproj_path=text, verbose=False).invoke("hi")
    # The marker written by hand is text like any other: one image, two markers.
    with pytest.raises(ValueError, match=r"media markers in text \(2\) exceeds number of bitmaps \(1\)"):
        chat.invoke([_ask(JPEG, prompt="What is <__media__>?")])
    # The instance still works.
    assert isinstance(chat.invoke([_ask(JPEG)]), AIMessage)
