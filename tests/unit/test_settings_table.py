"""The settings table (`_settings.py`) against the native structs, both ways: each row ends in a native
field, and each native field has a row or is listed as internal with the reason."""

from __future__ import annotations

import pytest

import langchain_llamacpp._settings as _settings


def test_the_table_matches_the_native_structs() -> None:
    assert _settings._mismatches() == []


def test_a_native_field_without_a_row_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    # rpc_timeout_ms and render_special are native fields that no class sets: listed, with the reason.
    assert "rpc_timeout_ms" in _settings.INTERNAL["model"]
    assert "render_special" in _settings.INTERNAL["request"]
    monkeypatch.setitem(_settings.INTERNAL, "model", {})
    monkeypatch.setitem(
        _settings.INTERNAL, "request", {k: v for k, v in _settings.INTERNAL["request"].items() if k != "render_special"}
    )
    assert _settings._mismatches() == [
        "the native model params' rpc_timeout_ms has no row (add one, or list it in INTERNAL with the reason)",
        "the native request params' render_special has no row (add one, or list it in INTERNAL with the reason)",
    ]
    with pytest.raises(ImportError, match=r"settings table does not match .* rpc_timeout_ms has no row"):
        _settings._check_against_native()


def test_internal_lists_only_native_fields_without_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_settings.INTERNAL, "engine", {"n_ctx": "has a row", "n_gizmos": "not native"})
    assert _settings._mismatches() == [
        "INTERNAL lists engine n_ctx, which has a row",
        "INTERNAL lists engine n_gizmos, not a field of the native params",
    ]


def test_every_internal_field_says_why() -> None:
    for target, internal in _settings.INTERNAL.items():
        for name, reason in internal.items():
            assert len(reason) > 20, (target, name)
