"""The CMake build: legacy flags from old docs are mapped or rejected with the new name."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("cmake") is None and not (Path(sys.prefix) / "bin" / "cmake").exists(),
    reason="cmake is not installed",
)


def _configure(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    cmake = shutil.which("cmake") or str(Path(sys.prefix) / "bin" / "cmake")
    return subprocess.run(
        [
            cmake,
            "-S",
            str(ROOT),
            "-B",
            str(tmp_path / "b"),
            f"-DPython_EXECUTABLE={sys.executable}",
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_legacy_flag_is_mapped_with_a_message(tmp_path: Path) -> None:
    proc = _configure(tmp_path, "-DLLAMA_NATIVE=OFF")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "-DLLAMA_NATIVE=OFF is a legacy flag: using -DGGML_NATIVE=OFF instead" in proc.stderr
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    assert "GGML_NATIVE:BOOL=OFF" in cache


def test_removed_backend_flag_fails_naming_the_problem(tmp_path: Path) -> None:
    proc = _configure(tmp_path, "-DLLAMA_CLBLAST=on")
    assert proc.returncode != 0
    assert "-DLLAMA_CLBLAST is no longer supported" in proc.stderr
