"""Instances that cross process boundaries: pickling and copying without the native state.

An instance caches native objects (its engine, a chat model's template worker) in private attributes.
They hold a running thread and llama.cpp memory, so they cannot be pickled; and they need not
be, since they are made again from the fields on first use. A copy shares them: an engine is
shared by every instance with the same settings anyway.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import langchain_llamacpp._native as _native
import langchain_llamacpp._templates as _templates


class NativeStateMixin(BaseModel):
    """Pickles the fields and drops the cached native objects (the unpickled instance loads lazily).

    `multiprocessing` with "spawn", `ProcessPoolExecutor` and the like pickle the instance to send
    it. Callbacks pickle only if their handlers do; the default (None) does.
    """

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        private = state.get("__pydantic_private__")
        if private:
            defaults = type(self).__private_attributes__
            state["__pydantic_private__"] = {
                name: defaults[name].get_default() if _is_native(value) else value for name, value in private.items()
            }
        return state

    def __deepcopy__(self, memo: dict[int, Any] | None = None) -> Any:
        # Native objects cannot be copied: the copy shares them, as instances share engines.
        memo = {} if memo is None else memo
        for value in (self.__pydantic_private__ or {}).values():
            if _is_native(value):
                memo[id(value)] = value
        return super().__deepcopy__(memo)


def _is_native(value: Any) -> bool:
    # Native objects, and the chat-template worker process (which belongs to one process).
    return type(value).__module__ in (_native.__name__, _templates.__name__)
