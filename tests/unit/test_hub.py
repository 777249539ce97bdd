"""`from_pretrained`: GGUF models from the Hugging Face Hub, against a fake cache, offline.

The cache is laid out as huggingface_hub lays it out (``models--org--name/refs/main``,
``snapshots/<commit>/<file>`` symlinks to ``blobs/<sha256>``), with the tiny test model under quantisation
style names and as a real split GGUF (three parts written by the ``gguf`` package, which llama.cpp loads).
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub  # the test extra has it: a missing one fails, as a missing model does
import huggingface_hub.constants
import huggingface_hub.errors
import huggingface_hub.utils
import pytest
from gguf import GGUFWriter

import tests.tiny_model as tiny_model
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, LlamaCppEmbeddings
from langchain_llamacpp._hub import download_gguf

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny-org/tiny-GGUF"
SPLIT_REPO = "tiny-org/tiny-split-GGUF"
BROKEN_SPLIT_REPO = "tiny-org/broken-split-GGUF"


def cache_repo(cache: Path, repo_id: str, files: dict[str, Path], commit: str = COMMIT, ref: str = "main") -> Path:
    """Put files into `cache` as huggingface_hub's download does; returns the snapshot folder."""
    repo = cache / huggingface_hub.constants.REPO_ID_SEPARATOR.join(["models", *repo_id.split("/")])
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    (repo / "blobs").mkdir(exist_ok=True)
    snapshot = repo / "snapshots" / commit
    for name, source in files.items():
        data = source.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture(scope="session")
def hub_cache(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: str) -> Path:
    work = tmp_path_factory.mktemp("hub")
    split_dir = work / "split"
    split_dir.mkdir()
    # The tiny model again, written with at most 8 tensors per file: a split GGUF in three parts.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tiny_model, "GGUFWriter", functools.partial(GGUFWriter, split_max_tensors=8))
        tiny_model.write_tiny_model(split_dir / "tiny-Q4_K_M.gguf", chat_template=tiny_model.CHATML)
    parts = sorted(split_dir.iterdir())
    assert [p.name for p in parts] == [f"tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    readme = work / "README.md"
    readme.write_text("# tiny\n")
    projector = work / "mmproj.gguf"
    projector.write_bytes(b"GGUF not a real projector")

    cache = work / "cache"
    model = Path(tiny_model_path)
    cache_repo(
        cache,
        REPO,
        {
            "README.md": readme,
            "tiny-Q4_K_M.gguf": model,
            "tiny-Q8_0.gguf": model,
            "mmproj-tiny-F16.gguf": projector,
        },
    )
    cache_repo(
        cache,
        SPLIT_REPO,
        {"tiny-F16.gguf": model, **{f"Q4_K_M/{p.name}": p for p in parts}},
    )
    cache_repo(cache, BROKEN_SPLIT_REPO, {parts[0].name: parts[0], parts[2].name: parts[2]})
    return cache


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """HF_HUB_OFFLINE=1 (huggingface_hub reads it at import, so its constant is set as well)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    yield


def snapshot(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / COMMIT


def test_exact_filename(hub_cache: Path) -> None:
    llm = LlamaCpp.from_pretrained(REPO, "tiny-Q8_0.gguf", cache_dir=hub_cache)
    assert llm.model_path == str(snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf")


def test_glob_and_generation(hub_cache: Path) -> None:
    llm = LlamaCpp.from_pretrained(REPO, filename="*Q4_K_M.gguf", cache_dir=hub_cache, temperature=0)
    assert llm.model_path == str(snapshot(hub_cache, REPO) / "tiny-Q4_K_M.gguf")
    text = llm.invoke("hi", max_tokens=2)
    assert isinstance(text, str) and text


def test_glob_is_case_insensitive_when_nothing_matches_exactly(hub_cache: Path) -> None:
    llm = LlamaCpp.from_pretrained(REPO, filename="*q8_0.gguf", cache_dir=hub_cache)
    assert llm.model_path.endswith("tiny-Q8_0.gguf")


def test_default_cache_from_huggingface_hub(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # HF_HUB_CACHE is read at import, like HF_HUB_OFFLINE.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    llm = LlamaCpp.from_pretrained(REPO, "*Q8_0.gguf")
    assert llm.model_path == str(snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf")


def test_ambiguous_glob(hub_cache: Path) -> None:
    with pytest.raises(ValueError, match="several GGUF models match") as info:
        LlamaCpp.from_pretrained(REPO, filename="tiny-*.gguf", cache_dir=hub_cache)
    message = str(info.value)
    assert "tiny-Q4_K_M.gguf" in message and "tiny-Q8_0.gguf" in message and REPO in message
    # No filename: the repository's only GGUF model, and this one has two (the projector does not count).
    with pytest.raises(ValueError, match=r"several GGUF models match '\*\.gguf'"):
        LlamaCpp.from_pretrained(REPO, cache_dir=hub_cache)


def test_no_match_lists_the_repository(hub_cache: Path) -> None:
    with pytest.raises(ValueError, match="no GGUF file matches") as info:
        LlamaCpp.from_pretrained(REPO, filename="*Q5_K_S.gguf", cache_dir=hub_cache)
    message = str(info.value)
    assert "'*Q5_K_S.gguf'" in message and REPO in message
    for name in ("tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "mmproj-tiny-F16.gguf"):
        assert name in message
    assert "README.md" not in message
    assert "HF_HUB_OFFLINE" in message  # says that the listing is the cache's


def test_kwargs_reach_the_constructor(hub_cache: Path) -> None:
    llm = LlamaCpp.from_pretrained(REPO, "tiny-Q8_0.gguf", cache_dir=hub_cache, n_ctx=256, max_tokens=3, seed=7)
    assert (llm.n_ctx, llm.max_tokens, llm.seed) == (256, 3, 7)
    with pytest.raises(TypeError, match="model_path"):
        LlamaCpp.from_pretrained(REPO, "tiny-Q8_0.gguf", cache_dir=hub_cache, model_path="x.gguf")
    with pytest.raises(ValueError, match="n_ctx"):
        LlamaCpp.from_pretrained(REPO, "tiny-Q8_0.gguf", cache_dir=hub_cache, n_ctx=-1)


def test_all_three_classes(hub_cache: Path) -> None:
    path = str(snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf")
    chat = ChatLlamaCpp.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=hub_cache, n_ctx=512, temperature=0)
    assert isinstance(chat, ChatLlamaCpp) and chat.model_path == path and chat.n_ctx == 512
    embeddings = LlamaCppEmbeddings.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=hub_cache, n_ctx=128)
    assert isinstance(embeddings, LlamaCppEmbeddings) and embeddings.model_path == path and embeddings.n_ctx == 128
    assert len(embeddings.embed_query("hi")) == 64
    llm = LlamaCpp.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=hub_cache)
    assert isinstance(llm, LlamaCpp)


def test_split_model(hub_cache: Path) -> None:
    folder = snapshot(hub_cache, SPLIT_REPO) / "Q4_K_M"
    # A glob that matches every part, the first part's name, or another part's: the model is the first part.
    for pattern in ("*Q4_K_M*.gguf", "Q4_K_M/tiny-Q4_K_M-00001-of-00003.gguf", "tiny-Q4_K_M-00002-of-00003.gguf"):
        files = download_gguf(SPLIT_REPO, pattern, cache_dir=hub_cache)
        assert files.model_path == str(folder / "tiny-Q4_K_M-00001-of-00003.gguf"), pattern
        assert files.repo_files == tuple(f"Q4_K_M/tiny-Q4_K_M-0000{i}-of-00003.gguf" for i in (1, 2, 3))
    llm = LlamaCpp.from_pretrained(SPLIT_REPO, "*Q4_K_M*", cache_dir=hub_cache, temperature=0)
    assert isinstance(llm.invoke("hi", max_tokens=2), str)


def test_split_model_listed_once(hub_cache: Path) -> None:
    with pytest.raises(ValueError, match="several GGUF models match") as info:
        LlamaCpp.from_pretrained(SPLIT_REPO, cache_dir=hub_cache)
    assert "Q4_K_M/tiny-Q4_K_M-00001-of-00003.gguf (+2 parts)" in str(info.value)
    assert "tiny-F16.gguf" in str(info.value)


def test_split_model_missing_a_part(hub_cache: Path) -> None:
    with pytest.raises(ValueError, match=r"misses part\(s\) 2 of 3"):
        LlamaCpp.from_pretrained(BROKEN_SPLIT_REPO, "*.gguf", cache_dir=hub_cache)


def test_mmproj(hub_cache: Path) -> None:
    files = download_gguf(REPO, "*Q8_0.gguf", mmproj=True, cache_dir=hub_cache)
    assert files.mmproj_path == str(snapshot(hub_cache, REPO) / "mmproj-tiny-F16.gguf")
    assert download_gguf(REPO, "*Q8_0.gguf", mmproj="*F16.gguf", cache_dir=hub_cache).mmproj_path == files.mmproj_path
    assert download_gguf(REPO, "*Q8_0.gguf", cache_dir=hub_cache).mmproj_path is None
    # The classes have no mmproj_path field yet: downloaded, and the model loads as before.
    assert "mmproj_path" not in LlamaCpp.model_fields
    llm = LlamaCpp.from_pretrained(REPO, "*Q8_0.gguf", mmproj=True, cache_dir=hub_cache)
    assert llm.model_path.endswith("tiny-Q8_0.gguf")
    with pytest.raises(ValueError, match=r"mmproj: no file matches 'mmproj\*\.gguf'"):
        download_gguf(SPLIT_REPO, "tiny-F16.gguf", mmproj=True, cache_dir=hub_cache)


def test_revision(hub_cache: Path) -> None:
    path = download_gguf(REPO, "*Q8_0.gguf", revision=COMMIT, cache_dir=hub_cache).model_path
    assert path == str(snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf")
    with pytest.raises(FileNotFoundError, match="revision 'v2'"):
        download_gguf(REPO, "*Q8_0.gguf", revision="v2", cache_dir=hub_cache)


def test_missing_repository_offline(hub_cache: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        LlamaCpp.from_pretrained("tiny-org/nothing-GGUF", "*Q4_K_M.gguf", cache_dir=hub_cache)
    message = str(info.value)
    assert "tiny-org/nothing-GGUF" in message and "*Q4_K_M.gguf" in message and "HF_HUB_OFFLINE" in message


def test_local_dir_offline(hub_cache: Path, tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "tiny-Q2_K.gguf").write_bytes((snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf").read_bytes())
    files = download_gguf("tiny-org/anything", "*Q2_K.gguf", local_dir=local)
    assert Path(files.model_path).resolve() == (local / "sub" / "tiny-Q2_K.gguf").resolve()


# -- online code paths, with the Hub replaced ------------------------------------------------------


def hub_http_error(cls_name: str, message: str) -> Exception:
    """A huggingface_hub HTTP error as raised for a response from the Hub."""
    cls = getattr(huggingface_hub.errors, cls_name, None) or getattr(huggingface_hub.utils, cls_name)
    major = int(huggingface_hub.__version__.split(".")[0])
    if major == 0:  # on requests; the response is optional
        return cls(message)  # type: ignore[no-any-return]
    http: Any = __import__("httpx" if major == 1 else "httpx2")
    url = "https://huggingface.co/api/models/tiny-org/x"
    return cls(message, response=http.Response(404, request=http.Request("GET", url)))  # type: ignore[no-any-return]


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")


def test_online_listing(hub_cache: Path, online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def list_repo_files(self: Any, repo_id: str, **kwargs: Any) -> list[str]:
        seen.append((repo_id, kwargs))
        return ["README.md", "tiny-Q4_K_M.gguf", "tiny-Q8_0.gguf", "mmproj-tiny-F16.gguf"]

    def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        seen.append((repo_id, filename, kwargs))
        return str(snapshot(hub_cache, REPO) / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    llm = LlamaCpp.from_pretrained(REPO, "*Q4_K_M.gguf", revision="main", token="hf_x", cache_dir=hub_cache)
    assert llm.model_path.endswith("tiny-Q4_K_M.gguf")
    assert seen[0] == (REPO, {"revision": "main", "token": "hf_x"})
    repo_id, filename, kwargs = seen[1]
    assert (repo_id, filename) == (REPO, "tiny-Q4_K_M.gguf")
    assert kwargs["revision"] == "main" and kwargs["token"] == "hf_x" and kwargs["cache_dir"] == str(hub_cache)
    assert kwargs["local_files_only"] is False


def test_online_missing_repository(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    error = hub_http_error("RepositoryNotFoundError", "404 Client Error. Repository Not Found")

    def list_repo_files(self: Any, repo_id: str, **kwargs: Any) -> list[str]:
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    with pytest.raises(FileNotFoundError, match=r"repository 'tiny-org/missing' not found") as info:
        LlamaCpp.from_pretrained("tiny-org/missing", "*Q4_K_M.gguf")
    assert info.value.__cause__ is error
    assert "*Q4_K_M.gguf" in str(info.value)


def test_online_gated_repository(online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    error = hub_http_error("GatedRepoError", "403 Client Error. Cannot access gated repo")

    def list_repo_files(self: Any, repo_id: str, **kwargs: Any) -> list[str]:
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    with pytest.raises(PermissionError, match="gated") as info:
        LlamaCpp.from_pretrained("tiny-org/gated", "*Q4_K_M.gguf")
    assert info.value.__cause__ is error


def test_online_missing_file(hub_cache: Path, online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Listed, then gone by the time it is downloaded.
    # The Hub's 404 for a file: RemoteEntryNotFoundError in newer huggingface_hub, EntryNotFoundError before.
    name = (
        "RemoteEntryNotFoundError"
        if hasattr(huggingface_hub.errors, "RemoteEntryNotFoundError")
        else "EntryNotFoundError"
    )
    error = hub_http_error(name, "404 Client Error. Entry Not Found")

    def hf_hub_download(repo_id: str, filename: str, **kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", lambda self, repo_id, **kw: ["tiny-Q4_K_M.gguf"])
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    with pytest.raises(FileNotFoundError, match=r"'tiny-Q4_K_M.gguf' not found in 'tiny-org/tiny-GGUF'") as info:
        LlamaCpp.from_pretrained(REPO, "tiny-Q4_K_M.gguf", cache_dir=hub_cache)
    assert info.value.__cause__ is error


def test_no_network(hub_cache: Path, online: None, monkeypatch: pytest.MonkeyPatch) -> None:
    error = OSError("[Errno 101] Network is unreachable")

    def list_repo_files(self: Any, repo_id: str, **kwargs: Any) -> list[str]:
        raise error

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    # In the cache: listed and loaded from it, without asking the network again.
    llm = LlamaCpp.from_pretrained(REPO, "*Q8_0.gguf", cache_dir=hub_cache)
    assert llm.model_path == str(snapshot(hub_cache, REPO) / "tiny-Q8_0.gguf")
    # Not in the cache: a ConnectionError naming the repository and the file.
    with pytest.raises(ConnectionError, match="cannot reach the Hugging Face Hub") as info:
        LlamaCpp.from_pretrained("tiny-org/elsewhere", "*Q8_0.gguf", cache_dir=hub_cache)
    assert "tiny-org/elsewhere" in str(info.value) and "*Q8_0.gguf" in str(info.value)
    assert "Network is unreachable" in str(info.value)
    assert info.value.__cause__ is error


def test_without_huggingface_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r'pip install "langchain-llamacpp\[hub\]"'):
        LlamaCpp.from_pretrained(REPO, "*Q4_K_M.gguf")
