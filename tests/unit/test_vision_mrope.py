"""Images for M-RoPE vision models (Qwen2-VL and kin) on a tiny random-weight Qwen2-VL-style model
(tests/tiny_qwen2vl.py): an image of nx x ny tokens takes one time position with row and column positions
from there, and the text after it continues max(nx, ny) positions on, not nx * ny.

The reference is llama.cpp's own `llama-mtmd-cli` built from the vendored tree: on the same files, images
and prompt our greedy output must be its output. Images of different shapes give different grids, so a
wrong position for the text after an image changes the text (with the engine's next position counted in
cells instead, the comparisons below fail: the report of issue 23 gives the run).
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from langchain_llamacpp import ChatLlamaCpp
from tests.llama_tools import llama_mtmd_cli
from tests.tiny_qwen2vl import grid
from tests.tiny_vision import write_test_png

PROMPT = "Describe the image."
N_PREDICT = 16
SIZES = {"wide": (64, 48), "tall": (48, 96)}  # grids of 4 x 3 and 3 x 6 tokens


def _chat(model: tuple[str, str], **kwargs: object) -> ChatLlamaCpp:
    text, mmproj = model
    settings: dict[str, object] = {"temperature": 0, "max_tokens": N_PREDICT, "ignore_eos": True, "verbose": False}
    return ChatLlamaCpp(model_path=text, mmproj_path=mmproj, **{**settings, **kwargs})


def _fresh(model: tuple[str, str], **kwargs: object) -> ChatLlamaCpp:
    """A chat whose engine (shared by the instances with the same settings) holds nothing cached."""
    chat = _chat(model, **kwargs)
    chat.load().clear_cache()
    return chat


def _image(path: Path) -> dict[str, str]:
    return {"type": "image", "base64": base64.b64encode(path.read_bytes()).decode(), "mime_type": "image/png"}


def _ask(image: Path, prompt: str = PROMPT) -> HumanMessage:
    return HumanMessage(content=[_image(image), {"type": "text", "text": prompt}])


def _cache_read(reply: AIMessage) -> int:
    assert reply.usage_metadata is not None
    return reply.usage_metadata.get("input_token_details", {}).get("cache_read", 0)


def _image_from_cache(reply: AIMessage, image: str) -> bool:
    """Whether the reply's prompt read more than the image's own cells from the cache."""
    nx, ny = grid(*SIZES[image])
    return _cache_read(reply) > nx * ny


def _cold(model: tuple[str, str], messages: list[BaseMessage]) -> str:
    """The reply of an engine that has cached nothing."""
    return str(_fresh(model, max_tokens=8, n_seq=2).invoke(messages).content)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    sizes = enumerate(SIZES.items())
    return {name: write_test_png(directory / f"{name}.png", w, h, seed=i + 1) for i, (name, (w, h)) in sizes}


def test_greedy_output_equals_llama_mtmd_cli(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    chat = _chat(tiny_qwen2vl)
    answers = []
    for name, image in images.items():
        nx, ny = grid(*SIZES[name])
        assert nx != ny  # the text after the image sits max(nx, ny) positions on: not nx * ny
        ours = chat.invoke([_ask(image)])
        assert ours.content == llama_mtmd_cli(*tiny_qwen2vl, str(image), PROMPT, n_predict=N_PREDICT), name
        assert ours.usage_metadata is not None
        assert ours.usage_metadata["output_tokens"] == N_PREDICT
        answers.append(ours.content)
    assert answers[0] != answers[1]  # the image matters


def test_an_image_in_several_batches(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    # 18 image tokens in batches of 8: the later batches start at the image's one time position again.
    tall = [_ask(images["tall"])]
    small = _chat(tiny_qwen2vl, n_batch=8, n_ubatch=8).invoke(tall)
    assert small.content == _fresh(tiny_qwen2vl, n_seq=2).invoke(tall).content


def test_two_images_in_one_message(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    chat = _chat(tiny_qwen2vl)
    wide, tall = images["wide"], images["tall"]
    content = [
        {"type": "text", "text": "Compare "},
        _image(wide),
        {"type": "text", "text": " with "},
        _image(tall),
        {"type": "text", "text": "."},
    ]
    ours = chat.invoke([HumanMessage(content=content)])
    marker = "<__media__>"
    prompt = f"Compare {marker} with {marker}."
    assert ours.content == llama_mtmd_cli(*tiny_qwen2vl, [str(wide), str(tall)], prompt, n_predict=N_PREDICT)
    swapped = chat.invoke([HumanMessage(content=[content[0], content[3], content[2], content[1], content[4]])])
    assert swapped.content == llama_mtmd_cli(*tiny_qwen2vl, [str(tall), str(wide)], prompt, n_predict=N_PREDICT)
    assert swapped.content != ours.content


def test_follow_up_reads_the_image_from_the_cache(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    chat = _chat(tiny_qwen2vl, max_tokens=8)
    tall = images["tall"]
    first = chat.invoke([_ask(tall)])
    follow_up = [_ask(tall), first, HumanMessage(content="And the colours?")]
    second = chat.invoke(follow_up)
    assert _image_from_cache(second, "tall")  # the turn's prefix, image included, came from the cache
    fresh = _fresh(tiny_qwen2vl, max_tokens=8, n_seq=2).invoke(follow_up)
    assert _cache_read(fresh) == 0
    assert second.content == fresh.content


def test_an_edited_reply_cuts_the_cache_after_the_image(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    # The cached reply is not the one sent back: the cells past the common prefix go, cut at its position
    # (one slot: the cut is in the slot that holds the conversation, not in a share to another).
    chat = _fresh(tiny_qwen2vl, max_tokens=8, n_seq=1)
    question = _ask(images["wide"])
    chat.invoke([question])
    edited = [question, AIMessage(content="A gradient."), HumanMessage(content="And the colours?")]
    second = chat.invoke(edited)
    assert _image_from_cache(second, "wide")
    assert second.content == _cold(tiny_qwen2vl, edited)


def test_a_prefix_shared_from_another_slot_keeps_the_positions(
    tiny_qwen2vl: tuple[str, str], images: dict[str, Path]
) -> None:
    # The cells are copied by position (seq_cp up to the next position), then the copy continues.
    chat = _fresh(tiny_qwen2vl, max_tokens=8, n_seq=6)
    question = [_ask(images["tall"])]
    first = chat.invoke(question)
    engine = chat.load()
    held = [i for i, tokens in enumerate(engine.cached_prompts()) if tokens]
    assert len(held) == 1
    copy = (held[0] + 1) % 6
    engine.kv_copy(held[0], copy)
    engine.kv_remove(held[0], 0)  # only the copy is left
    assert engine.slot_tokens(copy) and not engine.slot_tokens(held[0])
    follow_up = [*question, first, HumanMessage(content="And the colours?")]
    second = chat.invoke(follow_up)
    assert _image_from_cache(second, "tall")
    assert second.content == _cold(tiny_qwen2vl, follow_up)


def test_a_regenerated_prompt_shares_the_image_from_its_first_slot(
    tiny_qwen2vl: tuple[str, str], images: dict[str, Path]
) -> None:
    # The first slot keeps prompt and reply; the same prompt again goes to an empty slot and shares the
    # prompt's cells less its last token (seq_cp by position), which is then evaluated after the image.
    chat = _fresh(tiny_qwen2vl, max_tokens=8, n_seq=6)
    question = [_ask(images["wide"])]
    first = chat.invoke(question)
    again = chat.invoke(question)
    assert len([tokens for tokens in chat.load().cached_prompts() if tokens]) == 2
    assert _image_from_cache(again, "wide")
    assert again.content == first.content


def test_the_prompt_cache_on_disk_keeps_the_positions(
    tiny_qwen2vl: tuple[str, str], images: dict[str, Path], tmp_path: Path
) -> None:
    settings = {"max_tokens": 8, "prompt_cache_dir": str(tmp_path), "prompt_cache_min_tokens": 8}
    question = [_ask(images["wide"])]
    first = _fresh(tiny_qwen2vl, **settings).invoke(question)
    assert list(tmp_path.glob("*.lcpc"))
    follow_up = [*question, first, HumanMessage(content="And the colours?")]
    restored = _fresh(tiny_qwen2vl, n_seq=3, **settings).invoke(follow_up)  # another engine: reads the file
    assert _image_from_cache(restored, "wide")
    assert restored.content == _cold(tiny_qwen2vl, follow_up)


def test_prompt_lookup_drafts_after_an_image_give_the_same_text(
    tiny_qwen2vl: tuple[str, str], images: dict[str, Path]
) -> None:
    # Drafts sit at the positions after the image's max(nx, ny); a draft model is not used with media.
    question = [_ask(images["tall"], "Repeat: red green blue red green blue red green blue")]
    plain = _chat(tiny_qwen2vl, max_tokens=48).invoke(question)
    drafting = _chat(tiny_qwen2vl, max_tokens=48, prompt_lookup=True, draft_min=2, n_seq=2)
    assert drafting.invoke(question).content == plain.content
    stats = drafting.load().stats()
    assert stats.draft_tokens > 0 and stats.drafts_accepted > 0


def test_a_draft_model_does_not_draft_for_a_prompt_with_an_image(
    tiny_qwen2vl: tuple[str, str], images: dict[str, Path]
) -> None:
    # Its own context would need the image's embeddings and positions: the engine decodes without drafts.
    question = [_ask(images["wide"])]
    plain = _chat(tiny_qwen2vl).invoke(question)
    drafting = _chat(tiny_qwen2vl, draft_model_path=tiny_qwen2vl[0], draft_min=2, n_seq=3)
    assert drafting.invoke(question).content == plain.content
    assert drafting.load().stats().draft_tokens == 0
    drafting.invoke("Count: one two three one two three")  # text alone: the draft model drafts
    assert drafting.load().stats().draft_tokens > 0


def test_cells_of_an_m_rope_image_are_not_cut_or_moved(tiny_qwen2vl: tuple[str, str], images: dict[str, Path]) -> None:
    chat = _fresh(tiny_qwen2vl, max_tokens=2, n_seq=5)
    chat.invoke([_ask(images["wide"])])
    engine = chat.load()
    slot = next(i for i, tokens in enumerate(engine.cached_prompts()) if tokens)
    tokens = engine.slot_tokens(slot)
    first_image_cell = next(i for i, t in enumerate(tokens) if t < 0)
    with pytest.raises(ValueError, match="M-RoPE positions, which cannot be cut or moved"):
        engine.kv_remove(slot, 0, 1)  # the image would move down
    with pytest.raises(ValueError, match="M-RoPE positions"):
        engine.kv_remove(slot, first_image_cell + 1)  # cut inside the image
    assert engine.slot_tokens(slot) == tokens
    engine.kv_remove(slot, len(tokens) - 1)  # text after the image: fine
    engine.kv_remove(slot, first_image_cell)  # the image and all after it: fine
    assert engine.slot_tokens(slot) == tokens[:first_image_cell]
