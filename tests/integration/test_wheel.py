"""The release wheel, installed into a fresh virtual environment and run from outside the checkout.

`./dev test` builds the wheel first (`./dev wheel` with CI's three CPU variants, its build folder kept
between runs) and names it in LANGCHAIN_LLAMACPP_WHEEL; without that variable these tests are skipped.
The environment has no compiler on PATH (only its own bin/), and the scripts run in a temporary folder,
so nothing can come from the checkout or be compiled at install time. Dependencies come from the package
index (pip's cache).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.timing import SCALE

ROOT = Path(__file__).resolve().parents[2]
# Absolute: the venv fixture installs from a temporary folder, not the checkout.
_NAMED = os.environ.get("LANGCHAIN_LLAMACPP_WHEEL", "")
WHEEL = str((ROOT / _NAMED).resolve()) if _NAMED else ""
# The interpreter of the fresh venv: this one unless named (the abi3 wheel is tested with 3.12 and 3.13 so).
VENV_PYTHON = os.environ.get("LANGCHAIN_LLAMACPP_WHEEL_PYTHON") or sys.executable
QEMU = shutil.which("qemu-x86_64")

pytestmark = [
    pytest.mark.integration,
    # pytest's own 600 s limit (pyproject) also bounds the venv fixture: pip installing the wheel and its
    # dependencies into a fresh venv took longer than that on the loaded 2-core machine.
    pytest.mark.timeout(int(1800 * SCALE)),
    pytest.mark.skipif(not WHEEL, reason="LANGCHAIN_LLAMACPP_WHEEL unset: ./dev test builds the wheel and sets it"),
]

EMBED_ROUND_TRIP = """
import math, sys
from langchain_llamacpp import LlamaCppEmbeddings
emb = LlamaCppEmbeddings(model_path=sys.argv[1])
docs = ["The cat sat on the mat.", "Stock markets fell sharply on Monday.", "A recipe for tomato soup."]
vectors = emb.embed_documents(docs)
query = emb.embed_query("Where did the cat sit?")
again = emb.embed_documents(docs[:1])[0]
cos = lambda a, b: sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
best = max(range(len(docs)), key=lambda i: cos(query, vectors[i]))
print(len(vectors), len(query), best, round(cos(again, vectors[0]), 6))
"""


def _env(venv: Path) -> dict[str, str]:
    """The venv's bin/ alone on PATH: no compiler, no cmake; nothing from the checkout on sys.path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "LD_"))}
    env["PATH"] = str(venv / "bin")
    return env


def _run(venv: Path, args: list[str], cwd: Path, timeout: float = 600, **env: str) -> str:
    result = subprocess.run(
        args, cwd=cwd, env=_env(venv) | env, capture_output=True, text=True, timeout=timeout * SCALE, check=False
    )
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (dependencies from the index, through pip's cache)."""
    path = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run([VENV_PYTHON, "-m", "venv", str(path)], check=True)
    for tool in ("cc", "gcc", "c++", "g++", "cmake"):
        assert shutil.which(tool, path=str(path / "bin")) is None, tool
    _run(path, [str(path / "bin" / "python"), "-m", "pip", "install", "-q", WHEEL], cwd=path.parent)
    return path


def test_the_wheel_holds_everything_the_package_runs() -> None:
    names = zipfile.ZipFile(WHEEL).namelist()
    for wanted in ("llamacpp-template-worker", "_native.pyi", "py.typed", "grammars/json.gbnf", "libggml-base.so"):
        assert any(n.endswith(wanted) for n in names), wanted
    assert any("_native." in n and n.endswith(".so") for n in names)
    if "-abi3-" in Path(WHEEL).name:  # the stable-ABI build of the extension, for every CPython from 3.12 on
        assert any(n.endswith("/_native.abi3.so") for n in names), names
    assert len([n for n in names if "/libggml-cpu-" in n]) >= 2, "one CPU backend per instruction-set level"
    assert not [n for n in names if n.endswith((".cpp", ".h", ".c"))], "no sources in the wheel"


def test_quickstart_from_the_wheel(venv: Path, tmp_path: Path, gemma_path: str, smollm_path: str) -> None:
    # The example finds the cached models through the checkout's tests/models.py, which it appends to
    # sys.path: the package itself still comes from the venv (checked below).
    out = _run(venv, [str(venv / "bin" / "python"), str(ROOT / "examples" / "quickstart.py")], cwd=tmp_path)
    assert "== ChatLlamaCpp" in out and "usage:" in out and "{" in out, out


def test_embedding_round_trip_from_the_wheel(venv: Path, tmp_path: Path, nomic_path: str) -> None:
    out = _run(venv, [str(venv / "bin" / "python"), "-c", EMBED_ROUND_TRIP, nomic_path], cwd=tmp_path)
    n_docs, dim, best, same = out.split()
    assert (n_docs, dim, best) == ("3", "768", "0"), out
    assert float(same) > 0.9999, out


def test_the_package_is_the_installed_one(venv: Path, tmp_path: Path, tiny_model_path: str) -> None:
    # Libraries of the same names that are not libraries, on LD_LIBRARY_PATH and in the working directory:
    # the package's own (RPATH, searched first) must be the ones loaded, or the import fails.
    for name in ("libllama.so", "libggml.so", "libggml-base.so", "libmtmd.so", "libggml-cpu-x64.so"):
        (tmp_path / name).write_bytes(b"not a library")
    out = _run(
        venv,
        [str(venv / "bin" / "python"), str(ROOT / "tests" / "wheel_check.py"), str(Path(tiny_model_path).resolve())],
        cwd=tmp_path,
        LD_LIBRARY_PATH=str(tmp_path),
    )
    assert f"package: {venv.resolve()}" in out and "cpu_backend: libggml-cpu-" in out and "chat:" in out, out


def test_exit_with_a_request_in_flight_is_quiet(venv: Path, tmp_path: Path, tiny_model_path: str) -> None:
    """A daemon thread still generating at exit is parked, not ended inside a destructor (native/gil.h):
    in the abi3 build its finalization check is the interpreter's own function, found at import."""
    from tests.unit.test_process import _EXIT_SCRIPT

    script = _EXIT_SCRIPT.format(path=str(Path(tiny_model_path).resolve()), how="stream")
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script],
        cwd=tmp_path,
        env=_env(venv),
        capture_output=True,
        text=True,
        timeout=300 * SCALE,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.skipif(QEMU is None, reason="qemu-user is not installed (apt-get install qemu-user)")
@pytest.mark.parametrize(
    ("cpu", "allowed"),
    [
        # No AVX at all: the baseline (x64, or sse42 where built), not a crash on an illegal instruction.
        ("Nehalem", ("libggml-cpu-x64.so", "libggml-cpu-sse42.so")),
        ("Haswell", ("libggml-cpu-haswell.so",)),
    ],
)
def test_an_older_cpu_gets_its_own_backend(
    venv: Path, tmp_path: Path, tiny_model_path: str, cpu: str, allowed: tuple[str, ...]
) -> None:
    """qemu-user emulates the CPU model (its CPUID too): ggml must choose the variant that runs there."""
    out = _run(
        venv,
        [
            str(QEMU),
            "-cpu",
            cpu,
            str(venv / "bin" / "python"),
            str(ROOT / "tests" / "wheel_check.py"),
            str(Path(tiny_model_path).resolve()),
        ],
        cwd=tmp_path,
        timeout=900,
    )
    chosen = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("cpu_backend:"))
    assert chosen in allowed, out
    assert "generated:" in out and "chat:" in out, out
