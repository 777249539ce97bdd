"""GGUF models from the Hugging Face Hub, through ``huggingface_hub`` (``pip install "langchain-llamacpp[hub]"``).

`download_gguf` picks a model file in a repository by its name or a glob (``"*Q4_K_M.gguf"``), downloads it
into huggingface_hub's cache (every part of a split model, and optionally the multimodal projector beside it)
and returns local paths. `from_pretrained` on the LangChain classes calls it. Offline (``HF_HUB_OFFLINE=1``,
or the Hub unreachable) the files are listed and taken from the cache, so globs keep working.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import NamedTuple

INSTALL_HINT = 'pip install "langchain-llamacpp[hub]"'
_LIBRARY_NAME = "langchain-llamacpp"

# llama.cpp's split files (llama-gguf-split, convert_hf_to_gguf.py --split-max-*): model-00001-of-00003.gguf
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MMPROJ_GLOB = "mmproj*.gguf"


class HubFiles(NamedTuple):
    """Local paths of the files `download_gguf` chose and downloaded."""

    model_path: str
    """The model; for a split model its first part (llama.cpp loads the others from beside it)."""

    mmproj_path: str | None
    """The multimodal projector (``mmproj*.gguf``) when asked for; None otherwise. `from_pretrained`
    passes it to ``ChatLlamaCpp.mmproj_path``, which makes images (and audio) usable in messages."""

    repo_files: tuple[str, ...]
    """The files downloaded, as named in the repository (model parts, then the projector)."""


def download_gguf(
    repo_id: str,
    filename: str | None = None,
    *,
    mmproj: bool | str = False,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    local_dir: str | os.PathLike[str] | None = None,
    token: bool | str | None = None,
) -> HubFiles:
    """Choose a GGUF model in a Hub repository and download it; see `from_pretrained` for the arguments.

    Raises:
        ImportError: huggingface_hub is not installed.
        ValueError: no file or several files match ``filename`` (the message lists the repository's GGUF
            files), a split model misses parts, or no single projector matches ``mmproj``.
        FileNotFoundError: the repository (or revision, or file) does not exist on the Hub, or, offline,
            is not in the cache.
        PermissionError: a gated repository whose terms the token has not accepted.
        ConnectionError: the Hub cannot be reached and the files are not in the cache.
        OSError: a download failed.
    The huggingface_hub exception, where there is one, is the ``__cause__``.
    """
    _require_hub()
    from huggingface_hub import constants

    # The default cache resolved here, once, so that listing and downloading look in the same place.
    cache = os.path.expanduser(os.fspath(constants.HF_HUB_CACHE if cache_dir is None else cache_dir))
    local = None if local_dir is None else os.path.expanduser(os.fspath(local_dir))
    listing = _list_files(repo_id, filename, revision, cache, local, token)
    model_files = _select_model(repo_id, filename, listing)
    wanted = list(model_files)
    if mmproj:
        wanted.append(_select_mmproj(repo_id, mmproj, model_files, listing))
    paths = [
        _download(repo_id, name, revision, cache, local, token, listing.offline_reason is not None) for name in wanted
    ]
    parts = paths[: len(model_files)]
    if len({os.path.dirname(p) for p in parts}) > 1:  # the revision moved between two parts
        raise OSError(f"the parts of {model_files[0]!r} from {repo_id!r} came from different revisions; try again")
    return HubFiles(
        model_path=parts[0],
        mmproj_path=paths[-1] if mmproj else None,
        repo_files=tuple(wanted),
    )


# -- listing ------------------------------------------------------------------------------------


class _Listing(NamedTuple):
    files: list[str]
    """Repository paths (posix)."""
    offline_reason: str | None
    """None: listed by the Hub. Otherwise why the files were listed from the local cache."""


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"from_pretrained downloads models with huggingface_hub, which is not installed: {INSTALL_HINT}"
        ) from e


def _list_files(
    repo_id: str,
    filename: str | None,
    revision: str | None,
    cache_dir: str,
    local_dir: str | None,
    token: bool | str | None,
) -> _Listing:
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return _cached_files(repo_id, filename, revision, cache_dir, local_dir, "HF_HUB_OFFLINE is set", None)
    try:
        files = HfApi(library_name=_LIBRARY_NAME).list_repo_files(repo_id, revision=revision, token=token)
    except _error("HFValidationError") as e:
        raise ValueError(f"invalid Hugging Face repository id {repo_id!r}: {e}") from e
    except Exception as e:
        _raise_not_found(e, repo_id, revision, filename)
        # No network, a timeout, a server error: the files already in the cache, if any.
        return _cached_files(repo_id, filename, revision, cache_dir, local_dir, _first_line(e), e)
    return _Listing(files, None)


def _cached_files(
    repo_id: str,
    filename: str | None,
    revision: str | None,
    cache_dir: str,
    local_dir: str | None,
    reason: str,
    cause: BaseException | None,
) -> _Listing:
    """The repository's files already on this machine: in `local_dir`, or huggingface_hub's cache."""
    if local_dir is not None:
        root = Path(local_dir)
        where = f"local_dir {local_dir}"
        # huggingface_hub keeps its download metadata in local_dir/.cache/huggingface.
        files = _files_under(root, skip=lambda rel: rel.parts[0] == ".cache")
    else:
        from huggingface_hub import constants

        root = Path(cache_dir) / constants.REPO_ID_SEPARATOR.join(["models", *repo_id.split("/")])
        where = f"the cache {root.parent}"
        snapshot = _snapshot_folder(root, revision or constants.DEFAULT_REVISION)
        files = [] if snapshot is None else _files_under(snapshot, skip=lambda rel: False)
    if not files:
        wanted = f"{filename or '*.gguf'!r} from {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
        if cause is None:  # offline by choice
            raise FileNotFoundError(
                f"{wanted} is not in {where} and {reason}: download it once online, or unset HF_HUB_OFFLINE"
            )
        raise ConnectionError(
            f"cannot reach the Hugging Face Hub to list {wanted} ({reason}), and it is not in {where}"
        ) from cause
    return _Listing(files, f"{reason}; listing the files in {where}")


def _snapshot_folder(repo_folder: Path, revision: str) -> Path | None:
    """snapshots/<commit> for a branch or tag (refs/<name> holds its commit) or a commit hash."""
    ref = repo_folder / "refs" / revision
    if ref.is_file():
        commit = ref.read_text(encoding="utf-8").strip()
    elif _COMMIT.match(revision):
        commit = revision
    else:
        return None
    snapshot = repo_folder / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _files_under(root: Path, skip: Callable[[Path], bool]) -> list[str]:
    if not root.is_dir():
        return []
    files = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and not skip(rel):  # is_file follows the snapshot's symlinks (a broken one: no)
            files.append(rel.as_posix())
    return sorted(files)


# -- choosing files ---------------------------------------------------------------------------------


def _is_gguf(name: str) -> bool:
    return name.lower().endswith(".gguf")


def _is_mmproj(name: str) -> bool:
    return posixpath.basename(name).lower().startswith("mmproj")


def _split_key(name: str) -> tuple[str, int] | None:
    """(path without the part number, number of parts) for a part of a split model."""
    m = _SPLIT.match(name)
    return (m["stem"], int(m["count"])) if m else None


def _matches(names: Sequence[str], pattern: str, *, basename: bool) -> list[str]:
    """Names equal to the pattern; otherwise matching the glob (case-sensitive first, then not)."""
    if pattern in names:
        return [pattern]
    for fold in (False, True):
        p = pattern.lower() if fold else pattern
        found = []
        for name in names:
            n = name.lower() if fold else name
            if fnmatchcase(n, p) or (basename and fnmatchcase(posixpath.basename(n), p)):
                found.append(name)
        if found:
            return found
    return []


def _select_model(repo_id: str, filename: str | None, listing: _Listing) -> list[str]:
    """The repository paths of the one model that `filename` names: one file, or every part of a split."""
    pattern = filename or "*.gguf"
    candidates = [f for f in listing.files if _is_gguf(f) and (_is_mmproj(pattern) or not _is_mmproj(f))]
    groups: dict[str, list[str]] = {}
    for name in _matches(candidates, pattern, basename="/" not in pattern):
        key = _split_key(name)
        if key is None:
            groups[name] = [name]
        else:  # every part of its split, whichever part matched
            groups[key[0]] = sorted(c for c in candidates if _split_key(c) == key)
    if len(groups) != 1:
        what = "no GGUF file matches" if not groups else "several GGUF models match"
        matched = f" ({', '.join(_describe(g) for g in groups.values())})" if groups else ""
        raise ValueError(
            f"{what} {pattern!r} in {repo_id!r}{matched}; give the file name or a glob that matches one of: "
            f"{_inventory(listing)}"
        )
    (parts,) = groups.values()
    key = _split_key(parts[0])
    if key is not None:
        indices = {int(m["index"]) for m in (_SPLIT.match(p) for p in parts) if m}
        missing = sorted(set(range(1, key[1] + 1)) - indices)
        if missing:
            raise ValueError(
                f"split model {parts[0]!r} in {repo_id!r} misses part(s) {', '.join(map(str, missing))} "
                f"of {key[1]}; the repository has: {_inventory(listing)}"
            )
    return parts


def _select_mmproj(repo_id: str, mmproj: bool | str, model_files: list[str], listing: _Listing) -> str:
    """The multimodal projector beside the model: ``mmproj*.gguf``, or the files `mmproj` matches."""
    pattern = _MMPROJ_GLOB if mmproj is True else str(mmproj)
    folder = posixpath.dirname(model_files[0])
    if "/" in pattern:
        candidates = [f for f in listing.files if f not in model_files]
    else:
        candidates = [f for f in listing.files if posixpath.dirname(f) == folder and f not in model_files]
    found = [f for f in _matches(candidates, pattern, basename=True) if _is_gguf(f)]
    if len(found) != 1:
        what = "no file matches" if not found else f"several files match ({', '.join(found)})"
        others = [f for f in candidates if _is_gguf(f)]
        raise ValueError(
            f"mmproj: {what} {pattern!r} beside {model_files[0]!r} in {repo_id!r}; give one of: "
            f"{', '.join(others) or '(no other GGUF file)'}{_offline_note(listing)}"
        )
    return found[0]


def _describe(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else f"{parts[0]} (+{len(parts) - 1} parts)"


def _inventory(listing: _Listing) -> str:
    """The repository's GGUF models (a split model once), or all its files when it has none."""
    ggufs = [f for f in listing.files if _is_gguf(f)]
    shown: list[str] = []
    seen: set[tuple[str, int]] = set()
    for name in ggufs:
        key = _split_key(name)
        if key is None:
            shown.append(name)
        elif key not in seen:
            seen.add(key)
            shown.append(_describe(sorted(f for f in ggufs if _split_key(f) == key)))
    if not shown:
        shown = [f"(no GGUF file; files: {', '.join(listing.files) or 'none'})"]
    return ", ".join(shown) + _offline_note(listing)


def _offline_note(listing: _Listing) -> str:
    return "" if listing.offline_reason is None else f" (offline: {listing.offline_reason})"


# -- downloading -------------------------------------------------------------------------------------


def _download(
    repo_id: str,
    filename: str,
    revision: str | None,
    cache_dir: str,
    local_dir: str | None,
    token: bool | str | None,
    local_only: bool,
) -> str:
    from huggingface_hub import constants, hf_hub_download

    try:
        # The progress bar is huggingface_hub's (HF_HUB_DISABLE_PROGRESS_BARS=1 hides it).
        return hf_hub_download(
            repo_id,
            filename,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
            library_name=_LIBRARY_NAME,
            local_files_only=local_only,
        )
    except _error("LocalEntryNotFoundError") as e:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"{filename!r} from {repo_id!r} is not in the cache and HF_HUB_OFFLINE is set: "
                "download it once online, or unset HF_HUB_OFFLINE"
            ) from e
        raise ConnectionError(
            f"cannot download {filename!r} from {repo_id!r}: the Hugging Face Hub cannot be reached and the "
            f"file is not in the cache ({_first_line(e)})"
        ) from e
    except _error("EntryNotFoundError") as e:
        raise FileNotFoundError(f"{filename!r} not found in {repo_id!r} on the Hugging Face Hub") from e
    except (ValueError, TypeError):
        raise
    except Exception as e:
        _raise_not_found(e, repo_id, revision, filename)
        raise OSError(f"downloading {filename!r} from {repo_id!r} failed: {type(e).__name__}: {_first_line(e)}") from e


def _raise_not_found(e: Exception, repo_id: str, revision: str | None, filename: str | None) -> None:
    """A clear error for a repository or revision the Hub does not have (or does not show us)."""
    looking_for = f"looking for {filename or '*.gguf'!r}"
    if isinstance(e, _error("GatedRepoError")):
        raise PermissionError(
            f"{repo_id!r} is a gated repository on the Hugging Face Hub ({looking_for}): accept its terms at "
            f"https://huggingface.co/{repo_id} and pass token=... (or log in with `hf auth login`)"
        ) from e
    if isinstance(e, _error("RepositoryNotFoundError")):
        raise FileNotFoundError(
            f"repository {repo_id!r} not found on the Hugging Face Hub ({looking_for}); a private one needs "
            "token=... or `hf auth login`"
        ) from e
    if isinstance(e, _error("RevisionNotFoundError")):
        raise FileNotFoundError(
            f"revision {revision!r} not found in {repo_id!r} on the Hugging Face Hub ({looking_for})"
        ) from e


def _error(name: str) -> type[Exception]:
    """A huggingface_hub exception class. `huggingface_hub.utils` has them from 0.23 on (later ones
    also in `huggingface_hub.errors`), but without the explicit re-export that mypy looks for."""
    import huggingface_hub.utils

    cls = getattr(huggingface_hub.utils, name)
    assert isinstance(cls, type) and issubclass(cls, Exception)
    return cls


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
