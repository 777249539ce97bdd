"""One call's request: its options merged over the fields, its stop strings, and the native
`RequestParams` built from them by the settings table's sampling and request rows."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

import langchain_llamacpp._native as _native
import langchain_llamacpp._settings as _settings
from langchain_llamacpp._params import LlamaCppParams
from langchain_llamacpp._text import valid_texts

# Per-call options are checked against the declarations of the fields of the same names.
_OPTION_TYPES: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Annotated[info.annotation, info])  # type: ignore[arg-type]  # a type built at run time
    for name, info in LlamaCppParams.model_fields.items()
    if name in _settings.CALL_OPTIONS
}


def call_options(fields: LlamaCppParams, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The call's options (`kwargs`, checked as their fields check values) merged over the fields."""
    unknown = set(kwargs) - _settings.CALL_OPTIONS
    if unknown:
        raise ValueError(f"unknown option(s) {sorted(unknown)}; known: {', '.join(sorted(_settings.CALL_OPTIONS))}")
    options = {name: getattr(fields, name) for name in _settings.CALL_OPTIONS}
    # A grammar given for this call replaces the instance's, whichever way it is given.
    if "grammar" in kwargs or "grammar_path" in kwargs:
        options["grammar"] = options["grammar_path"] = None
    options.update({name: check_option(name, value) for name, value in kwargs.items()})
    return options


def check_option(name: str, value: Any) -> Any:
    """A per-call option's value as its field would take it; a ValueError naming it otherwise."""
    try:
        return _OPTION_TYPES[name].validate_python(value)
    except ValidationError as e:
        raise ValueError(f"invalid {name}={value!r}: {e.errors()[0]['msg']}") from None


def stop_list(fields: LlamaCppParams, stop: list[str] | None) -> list[str]:
    """The constructor's stop strings plus the call's, never one dropping the other."""
    merged = list(fields.stop or [])
    for s in stop or []:
        if s not in merged:
            merged.append(s)
    return merged


def request_params(prompt: list[int], stop: list[str], options: dict[str, Any]) -> _native.RequestParams:
    """The native request for `prompt`: sampling settings, grammar, max tokens, logprobs from `options`."""
    params = _native.RequestParams()
    params.prompt = prompt
    params.stop = valid_texts(stop, "stop")
    targets = {"request": params, "sampling": params.sampling}
    for row in _settings.REQUEST_ROWS:
        value = row.value(options.get)
        if value is not None:
            setattr(targets[row.target], row.attr, value)
    return params
