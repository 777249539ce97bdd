"""`from_pretrained`: a model class made from a GGUF file on the Hugging Face Hub (see `_hub`)."""

from __future__ import annotations

import os
from typing import Any, TypeVar

from pydantic import BaseModel

import langchain_llamacpp._hub as _hub

_Model = TypeVar("_Model", bound="FromPretrainedMixin")


class FromPretrainedMixin(BaseModel):
    """`from_pretrained`, shared by `LlamaCpp`, `ChatLlamaCpp` and `LlamaCppEmbeddings`."""

    @classmethod
    def from_pretrained(
        cls: type[_Model],
        repo_id: str,
        filename: str | None = None,
        *,
        mmproj: bool | str = False,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        local_dir: str | os.PathLike[str] | None = None,
        token: bool | str | None = None,
        **kwargs: Any,
    ) -> _Model:
        """A model from the Hugging Face Hub, downloaded into huggingface_hub's cache on first use.

        Needs ``pip install "langchain-llamacpp[hub]"``. Shows huggingface_hub's progress bars (set
        ``HF_HUB_DISABLE_PROGRESS_BARS=1`` to hide them). With ``HF_HUB_OFFLINE=1``, or when the Hub
        cannot be reached, the files are listed from the cache and loaded from it, globs included.

        Example:
            .. code-block:: python

                from langchain_llamacpp import ChatLlamaCpp

                chat = ChatLlamaCpp.from_pretrained(
                    "Qwen/Qwen2.5-0.5B-Instruct-GGUF", filename="*q4_k_m.gguf", n_ctx=4096, temperature=0
                )

        Args:
            repo_id: the repository, ``"org/name"``.
            filename: the GGUF file: its name (``"sub/model-Q4_K_M.gguf"``), or a glob matching one
                model, usually its quantisation (``"*Q4_K_M.gguf"``; case-insensitive when nothing matches
                exactly). A split model (``model-00001-of-00003.gguf``, ...) counts as one: every part is
                downloaded and the first one loaded. None: the repository's only GGUF model. No match or
                several: ``ValueError`` listing the repository's GGUF files.
            mmproj: also download the multimodal projector beside the model: True for ``mmproj*.gguf``, or
                a name or glob. Its path goes to the ``mmproj_path`` field where the class has one
                (``ChatLlamaCpp``); the other classes only download it.
            revision: a branch, tag or commit (default ``"main"``).
            cache_dir: huggingface_hub's cache folder (default ``HF_HUB_CACHE``, ``~/.cache/huggingface/hub``).
            local_dir: download into this folder instead of the cache.
            token: a Hugging Face token for private or gated repositories (default: the saved login).
            **kwargs: the class's fields (``n_ctx``, ``n_gpu_layers``, ``temperature``, ...).

        Raises ``FileNotFoundError`` (no such repository, revision or file; offline and not in the
        cache), ``PermissionError`` (a gated repository) and ``ConnectionError`` (the Hub unreachable
        and the files not in the cache), each naming the repository and the file, with huggingface_hub's
        exception, where there is one, as the ``__cause__``; ``ImportError`` without huggingface_hub.
        """
        if "model_path" in kwargs:
            raise TypeError("from_pretrained sets model_path from the downloaded file; do not pass it")
        files = _hub.download_gguf(
            repo_id,
            filename,
            mmproj=mmproj,
            revision=revision,
            cache_dir=cache_dir,
            local_dir=local_dir,
            token=token,
        )
        if files.mmproj_path is not None and "mmproj_path" in cls.model_fields:
            kwargs["mmproj_path"] = files.mmproj_path
        return cls(**{**kwargs, "model_path": files.model_path})
