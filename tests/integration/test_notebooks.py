"""The documentation notebooks run from top to bottom, and what they show is what their code prints."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from tests import notebooks

IDS = [p.stem for p in notebooks.NOTEBOOKS]


@pytest.mark.parametrize("path", notebooks.NOTEBOOKS, ids=IDS)
def test_notebook_runs(path: Path, gemma_path: str, qwen_path: str, nomic_path: str) -> None:
    # The fixtures fetch and verify the models. A failing cell ends the run: the failure names the
    # cell, shows its code and the error with its traceback.
    failure = notebooks.execute(path)
    assert failure is None, failure


@pytest.mark.parametrize("path", notebooks.NOTEBOOKS, ids=IDS)
def test_notebook_is_stored_with_the_outputs_of_its_code(path: Path) -> None:
    stored = nbformat.read(path, as_version=4)
    digest = stored.metadata.get(notebooks.METADATA_KEY, {}).get("sources_sha256")
    assert digest == notebooks.sources_digest(stored), f"re-run `./dev notebooks` after editing {path.name}"
    code = [cell for cell in stored.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not any("tests.models" in cell.source or "sys.path" in cell.source for cell in code)
