"""Running the documentation notebooks as a reader would.

The notebooks name their models by file name, as a user's own notebook would; they run in
`build/notebooks/`, where those names are links to the verified test models (and `data/` to the
notebooks' data). `./dev notebooks` (`python -m tests.notebooks --save`) runs them and stores their
outputs, with a digest of the code they ran; the tests run them again and check that the stored
outputs belong to the code as it is.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import textwrap
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from tests import models
from tests.tiny_vision import MMPROJ_FILE, TEXT_FILE, write_tiny_vision_model

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "docs" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
RUN_DIR = ROOT / "build" / "notebooks"
METADATA_KEY = "langchain_llamacpp"


def prepare() -> Path:
    """The folder the notebooks run in: links named as the notebooks name their files."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    links = {models.get(name).name: models.get(name) for name in models.MODELS}
    links["data"] = NOTEBOOK_DIR / "data"
    # A reasoning model's template (no reasoning model ships in a package) and a vision model (random
    # weights: none ships either), under the names the chat notebook uses.
    links["Qwen3-0.6B.jinja"] = ROOT / "vendor" / "llama.cpp" / "models" / "templates" / "Qwen-Qwen3-0.6B.jinja"
    links["test-image.jpeg"] = ROOT / "vendor" / "llama.cpp" / "tools" / "mtmd" / "test-1.jpeg"
    vision = ROOT / "build" / "test-models" / "tiny-vision"
    if not (vision / TEXT_FILE).exists() or not (vision / MMPROJ_FILE).exists():
        vision.mkdir(parents=True, exist_ok=True)
        write_tiny_vision_model(vision)
    links["tiny-vision-model.gguf"] = vision / TEXT_FILE
    links["tiny-vision-mmproj.gguf"] = vision / MMPROJ_FILE
    for name, target in links.items():
        link = RUN_DIR / name
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target)
    return RUN_DIR


def sources_digest(notebook: nbformat.NotebookNode) -> str:
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    return hashlib.sha256(json.dumps(code).encode()).hexdigest()


def execute(path: Path, save: bool = False) -> str | None:
    """Run a notebook top to bottom; None if every cell ran, else what failed: the cell and its error.

    A failing cell ends the run (the cells after it build on it), and a notebook that failed is not stored.
    """
    notebook = nbformat.read(path, as_version=4)
    started: list[int] = []  # the index of each cell as it starts
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        record_timing=False,  # no timestamps in the stored file
        resources={"metadata": {"path": str(prepare())}},
        on_cell_start=lambda cell, cell_index: started.append(cell_index),
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as error:
        return describe_failure(path, notebook, started[-1] if started else None, error)
    if save:
        notebook.metadata[METADATA_KEY] = {"sources_sha256": sources_digest(notebook)}
        nbformat.write(notebook, path)
    return None


def describe_failure(path: Path, notebook: nbformat.NotebookNode, index: int | None, error: Exception) -> str:
    """The failing cell (its number among the code cells, and its code) and its error, as plain text."""
    if index is None:  # the kernel did not start
        return f"{path.name}: {type(error).__name__}: {error}"
    cell = notebook.cells[index]
    code = [c for c in notebook.cells if c.cell_type == "code"]
    if isinstance(error, CellExecutionError):
        what = f"{error.ename}: {error.evalue}"
        shown = [output for output in cell.outputs if output.output_type == "error"]
        traceback = "\n".join(line for output in shown for line in output.traceback)
    else:  # a timeout or a dead kernel
        what, traceback = f"{type(error).__name__}: {error}", ""
    text = f"{path.name}, code cell {code.index(cell) + 1} of {len(code)}: {what}\n"
    text += textwrap.indent(cell.source, "    ") + "\n" + traceback
    return re.sub(r"\x1b\[[0-9;]*m", "", text).rstrip()  # without IPython's colours


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", action="store_true", help="store the outputs in the notebooks")
    parser.add_argument("names", nargs="*", help="notebook names (default: all)")
    args = parser.parse_args(argv)
    for path in NOTEBOOKS:
        if not args.names or path.stem in args.names:
            print(f"running {path.relative_to(ROOT)}", flush=True)
            failure = execute(path, save=args.save)
            if failure:
                print(failure, file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
