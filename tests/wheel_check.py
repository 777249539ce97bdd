"""Checks an installed langchain-llamacpp wheel from outside the checkout (the standard library and the package).

    python tests/wheel_check.py [MODEL.gguf] [--expect-backend libggml-cpu-haswell.so]

Run as a script, so the checkout is not on sys.path: the package imported is the installed one. Checks that
every file the package runs is in it, prints the CPU backend that ggml chose for this CPU
(``cpu_backend: ...``), and with a model (a tiny one will do) generates a few tokens and answers a chat turn
through the template worker. tests/integration/test_wheel.py runs it (also under qemu-user, as older CPUs);
cibuildwheel's test command runs it on each wheel it builds.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import langchain_llamacpp
from langchain_llamacpp import ChatLlamaCpp, LlamaCpp, native


def check_files(folder: Path) -> None:
    """The extension, the template worker, the grammars, the stubs and py.typed, all inside the package."""
    wanted = ["_native.*.so", "_native.pyi", "py.typed", "llamacpp-template-worker", "grammars/json.gbnf"]
    missing = [pattern for pattern in wanted if not list(folder.glob(pattern))]
    if missing:
        sys.exit(f"the installed package lacks {missing}: {folder}")
    if (folder.parent / "native").is_dir() or (folder.parent / "CMakeLists.txt").exists():
        sys.exit(f"imported from a checkout, not from the installed wheel: {folder}")


def cpu_backend(folder: Path) -> str:
    info = native.system_info()
    found = re.search(r"CPU_BACKEND = (\S+)", info)
    if found is None:
        return "built in"
    backend = found.group(1)
    if not (folder / backend).is_file():
        sys.exit(f"the CPU backend {backend} was not loaded from the package's folder {folder}")
    return backend


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", help="a GGUF model with a chat template (a tiny one will do)")
    parser.add_argument("--expect-backend", help="the CPU backend file ggml must choose here")
    args = parser.parse_args()

    folder = Path(langchain_llamacpp.__file__).resolve().parent
    check_files(folder)
    backend = cpu_backend(folder)
    print(f"package: {folder}")
    print(f"cpu_backend: {backend}")
    print(f"variants: {' '.join(sorted(p.name for p in folder.glob('libggml-cpu-*')))}")
    if args.expect_backend and backend != args.expect_backend:
        sys.exit(f"expected the CPU backend {args.expect_backend}, ggml chose {backend}")
    if args.model:
        text = LlamaCpp(model_path=args.model, temperature=0, max_tokens=8).invoke("Hello")
        print(f"generated: {len(text)} characters")
        reply = ChatLlamaCpp(model_path=args.model, temperature=0, max_tokens=8).invoke("Hi")
        print(f"chat: {reply.usage_metadata}")


if __name__ == "__main__":
    main()
