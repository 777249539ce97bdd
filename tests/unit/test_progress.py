"""The load progress bar: shown with progress=True (or verbose), never otherwise."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import sys
from langchain_llamacpp import LlamaCpp, LlamaCppEmbeddings
cls = {"llm": LlamaCpp, "embeddings": LlamaCppEmbeddings}[sys.argv[2]]
progress = {"on": True, "off": False, "default": None}[sys.argv[3]]
cls(model_path=sys.argv[1], progress=progress, n_ctx=64).load()
"""


@pytest.mark.parametrize("kind", ["llm", "embeddings"])
@pytest.mark.parametrize("setting", ["on", "off", "default"])
def test_progress_bar(tiny_model_path: str, kind: str, setting: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, tiny_model_path, kind, setting], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    if setting == "on":
        assert "loading tiny.gguf" in done.stderr and "100%" in done.stderr
    else:
        assert done.stderr == ""
