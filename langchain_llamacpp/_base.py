"""What `LlamaCpp` and `ChatLlamaCpp` do with their fields at run time: load the shared engine, name
the model to LangChain and LangSmith, and count tokens with the model's own tokenizer."""

from __future__ import annotations

import os
from typing import Any

from pydantic import PrivateAttr

import langchain_llamacpp._registry as _registry
import langchain_llamacpp._request as _request
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._params import LlamaCppParams
from langchain_llamacpp._text import valid_text
from langchain_llamacpp.native import Engine, Model


class LlamaCppBase(LlamaCppParams):
    """The fields of `LlamaCppParams`, and what both generation classes do with them."""

    _loaded: Engine | None = PrivateAttr(default=None)

    # -- engine ---------------------------------------------------------------------------

    def load(self) -> Engine:
        """Load the model now (otherwise it is loaded on first use) and return its engine."""
        if not _registry.is_live(self._loaded):  # None, or inherited through fork()
            self._loaded = _registry.get_engine(
                _settings.model_config(self), _settings.engine_config(self), self.verbose, self.progress
            )
        return self._loaded

    @property
    def native_model(self) -> Model:
        """The loaded llama.cpp model (tokenize, detokenize, metadata)."""
        if self.vocab_only:
            return _registry.load_model(_settings.model_config(self), self.verbose, self.progress)
        return self.load().model

    def close(self) -> None:
        """Drop this instance's engine; weights are freed when no instance uses them."""
        self._loaded = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _speculative(self) -> bool:
        return bool(self.draft_model_path or self.prompt_lookup)

    # -- tokens ---------------------------------------------------------------------------

    def get_token_ids(self, text: str) -> list[int]:
        """The token ids of `text` by the model's own tokenizer (special tokens written in it included)."""
        tokens = self.native_model.tokenize(valid_text(text, "text"), add_special=False, parse_special=True)
        return list(tokens)

    def get_num_tokens(self, text: str) -> int:
        """Tokens in `text` by the model's own tokenizer."""
        return len(self.get_token_ids(text))

    # -- identity, for LangChain and LangSmith -------------------------------------------------

    def _model_name(self) -> str:
        return os.path.basename(self.model_path)

    def _base_identifying_params(self) -> dict[str, Any]:
        return {
            "model_path": self.model_path,
            "n_ctx": self.n_ctx,
            "n_gpu_layers": self.n_gpu_layers,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "max_tokens": self.max_tokens,
            "repeat_penalty": self.repeat_penalty,
            "stop": self.stop,
            "grammar": self.grammar,
            "grammar_path": str(self.grammar_path) if self.grammar_path else None,
            **self.model_kwargs,
        }

    def _add_ls_params(self, params: Any, stop: list[str] | None, kwargs: dict[str, Any]) -> Any:
        """LangSmith's ls_* fields, from the instance and this call's options."""
        params["ls_provider"] = "llamacpp"
        params["ls_model_name"] = kwargs.get("model") or self._model_name()
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None and max_tokens >= 0:
            params["ls_max_tokens"] = max_tokens
        merged = _request.stop_list(self, stop)
        if merged:
            params["ls_stop"] = merged
        return params
