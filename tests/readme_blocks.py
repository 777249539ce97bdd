"""Running the README's Python blocks and the class docstrings' examples as a reader would.

Each ```` ```python ```` block of README.md is a script of its own; a class docstring's
``.. code-block:: python`` examples are one script (its "Instantiate" block defines ``llm`` and the
later ones use it). A script runs in a fresh Python process, in a temporary folder where every GGUF file
name it mentions is a link to a test model (`MODEL_MAP`), so the code runs exactly as written. Its lines
keep their numbers in the source file (blank lines are put before them), so a traceback's line numbers
are README.md's or the module's.

A block that cannot run here says so in an HTML comment on the line before it, which the tests report as
the reason for skipping it::

    <!-- skip: needs a GPU -->
    ```python

The reasons in use: a GPU, the network (the Hugging Face Hub), a vision model, an rpc-server.

    python -m tests.readme_blocks            # run them all, print each one's time
    python -m tests.readme_blocks --show README.md:120 chat_models.py   # those whose label starts so,
                                                                       # with what they print
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The classes whose docstring examples run, and the modules that define them.
DOCSTRING_CLASSES = {
    "ChatLlamaCpp": ROOT / "langchain_llamacpp" / "chat_models.py",
    "LlamaCpp": ROOT / "langchain_llamacpp" / "llms.py",
    "LlamaCppEmbeddings": ROOT / "langchain_llamacpp" / "embeddings.py",
}

# The test model (a key of tests.models.MODELS) that stands in for each model file name the examples use,
# first match wins (case-insensitive globs on the file name). Every Qwen (a chat model with tools, a
# reasoning or a bigger one) runs as the 0.5B coder: the same vocabulary, template family and tool calls,
# at a fraction of the time. A name that matches nothing fails the test: add it here.
MODEL_MAP: tuple[tuple[str, str], ...] = (
    ("*embed*", "nomic"),  # nomic-embed-text, bge, e5, ... -> nomic-embed-text-v1.5
    ("*qwen*", "qwen"),  # Qwen2.5-Coder 0.5B / 1.5B, Qwen3 -> qwen2.5-coder-0.5b-instruct
    ("*smollm*", "smollm2"),  # SmolLM2-135M-Instruct
    ("gemma-3-270m*", "gemma3"),  # the base completion model
    ("model.gguf", "gemma3"),  # "any model" in the low-level and migration examples
)

DEFAULT_TIMEOUT = 300.0  # seconds per script: CI has 2 cores, several blocks load a model and decode
_SKIP = re.compile(r"^<!--\s*skip:\s*(?P<reason>.+?)\s*-->$")
_GGUF_NAME = re.compile(r"""["']([^"'\s/\\*?\[]+\.gguf)["']""")  # a file name, not a glob


@dataclass(frozen=True)
class Script:
    """Code to run as one script: README.md's block or a class's docstring examples."""

    label: str  # "README.md:120", "chat_models.py:ChatLlamaCpp"
    path: Path  # the file it comes from
    first_line: int  # the 1-based line of its first line of code in that file
    source: str  # the code, dedented, its lines contiguous from first_line (blank lines kept)
    skip: str | None = None  # why it cannot run in the tests

    def padded(self) -> str:
        """The code preceded by blank lines, so that its line numbers are those of its file."""
        return "\n" * (self.first_line - 1) + self.source

    def numbered(self) -> str:
        """The code with its file's line numbers, for a failure message."""
        lines = self.source.splitlines()
        return "\n".join(f"{self.first_line + i:5d}  {line}" for i, line in enumerate(lines) if line.strip())


def markdown_blocks(text: str, path: Path = README) -> list[Script]:
    """The ```` ```python ```` blocks of a Markdown text, with the skip reason of the comment before each."""
    lines = text.splitlines()
    scripts: list[Script] = []
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        start = index + 1
        end = start
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{path.name}:{index + 1}: a ```python block that is never closed")
        skip = _skip_reason(lines, index)
        label = f"{path.name}:{start + 1}"
        scripts.append(Script(label, path, start + 1, "\n".join(lines[start:end]) + "\n", skip))
        index = end + 1
    return scripts


def _skip_reason(lines: list[str], fence: int) -> str | None:
    """The reason in a `<!-- skip: ... -->` comment on the last non-blank line before a fence."""
    before = fence - 1
    while before >= 0 and not lines[before].strip():
        before -= 1
    match = _SKIP.match(lines[before].strip()) if before >= 0 else None
    return match.group("reason") if match else None


def docstring_script(module_path: Path, class_name: str) -> Script:
    """A class docstring's ``.. code-block:: python`` examples, as one script with the module's line numbers."""
    source = module_path.read_text()
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    doc = node.body[0]
    if not (isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(doc.value.value, str)):
        raise ValueError(f"{module_path.name}: {class_name} has no docstring")
    # The docstring's value (escapes resolved, as Python sees the code), its line i on file line lineno + i.
    doc_lines = doc.value.value.splitlines()
    code = [""] * len(doc_lines)
    for start, block in _code_blocks(doc_lines):
        for offset, line in enumerate(block):
            code[start + offset] = line
    first = next((i for i, line in enumerate(code) if line.strip()), None)
    if first is None:
        raise ValueError(f"{module_path.name}: {class_name}'s docstring has no Python example")
    body = "\n".join(code[first:]).rstrip() + "\n"
    return Script(f"{module_path.name}:{class_name}", module_path, doc.lineno + first, body)


def _code_blocks(lines: list[str]) -> list[tuple[int, list[str]]]:
    """(index of the first line, dedented lines) of each ``.. code-block:: python`` directive's body."""
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != ".. code-block:: python":
            continue
        indent = len(line) - len(line.lstrip())
        body_start = index + 1
        end = body_start
        while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
            end += 1
        body = lines[body_start:end]
        while body and not body[-1].strip():
            body.pop()
        dedented = textwrap.dedent("\n".join(body)).splitlines()
        blocks.append((body_start, dedented))
    return blocks


def all_scripts() -> list[Script]:
    """README.md's blocks, then one script per class docstring."""
    scripts = markdown_blocks(README.read_text())
    scripts += [docstring_script(path, name) for name, path in DOCSTRING_CLASSES.items()]
    return scripts


def model_names(source: str) -> list[str]:
    """The GGUF file names a script mentions in string literals (without a folder)."""
    return sorted(set(_GGUF_NAME.findall(source)))


def stand_in_for(name: str) -> str:
    """The key in tests.models.MODELS of the model that stands in for a file name."""
    for pattern, key in MODEL_MAP:
        if fnmatch.fnmatch(name.lower(), pattern.lower()):
            return key
    raise LookupError(f"no test model stands in for {name!r}: add a pattern to MODEL_MAP in tests/readme_blocks.py")


def link_models(script: Script, folder: Path) -> None:
    """Links in `folder`, named as the script names its models, to the test models."""
    from tests import models  # fetches (and verifies) a model on first use

    for name in model_names(script.source):
        (folder / name).symlink_to(models.get(stand_in_for(name)))


@dataclass(frozen=True)
class Outcome:
    failure: str | None  # None: the script exited with 0
    stdout: str
    cpu_seconds: float  # the script's CPU time (user + system), steadier than the clock on a busy machine


def execute(script: Script, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """Run a script in a fresh interpreter from a temporary folder."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory(prefix="readme-block-") as tmp:
        folder = Path(tmp)
        link_models(script, folder)
        file = folder / f"{script.path.stem}_{script.first_line}.py"
        file.write_text(script.padded())
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        try:
            done = subprocess.run(
                [sys.executable, file.name], cwd=folder, env=env, capture_output=True, text=True, timeout=timeout
            )
            failure = None if done.returncode == 0 else describe(script, f"exited with {done.returncode}", done.stderr)
            stdout = done.stdout
        except subprocess.TimeoutExpired as e:
            failure, stdout = describe(script, f"did not finish in {timeout:.0f} s", _text(e.stderr)), _text(e.stdout)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Outcome(failure, stdout, cpu)


def run(script: Script, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Run a script; None if it exits with 0, else why not (see `describe`)."""
    return execute(script, timeout).failure


def _text(output: str | bytes | None) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def describe(script: Script, what: str, stderr: str) -> str:
    """A failure: where the script is, its code with line numbers, and what it wrote on stderr."""
    where = f"{script.path.relative_to(ROOT) if script.path.is_relative_to(ROOT) else script.path}"
    return (
        f"{script.label} (line {script.first_line} of {where}) {what}\n"
        f"{script.numbered()}\n--- stderr (line numbers are {script.path.name}'s) ---\n{stderr.rstrip()}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print what each script prints")
    parser.add_argument("labels", nargs="*", help="only the scripts whose label starts so")
    args = parser.parse_args(argv)
    failed = 0
    for script in all_scripts():
        if args.labels and not any(script.label.startswith(prefix) for prefix in args.labels):
            continue
        if script.skip:
            print(f"{script.label}: skipped ({script.skip})", flush=True)
            continue
        started = time.monotonic()
        outcome = execute(script)
        status = "FAILED" if outcome.failure else "ok"
        took = f"{time.monotonic() - started:.1f} s, {outcome.cpu_seconds:.1f} s of CPU"
        print(f"{script.label}: {status} in {took}", flush=True)
        if args.show:
            print(textwrap.indent(outcome.stdout.rstrip(), "    | "), flush=True)
        if outcome.failure:
            failed += 1
            print(outcome.failure, file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
