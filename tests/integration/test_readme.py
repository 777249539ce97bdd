"""Every Python block of README.md, and the examples in the classes' docstrings, run as written.

Each runs as a script in its own process, from a temporary folder where the model files it names are
links to the test models (see `tests.readme_blocks`). A block marked `<!-- skip: reason -->` in the
README is skipped with that reason.
"""

from __future__ import annotations

import pytest

from tests import readme_blocks

SCRIPTS = readme_blocks.all_scripts()


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.label for s in SCRIPTS])
def test_example_runs(script: readme_blocks.Script) -> None:
    if script.skip:
        pytest.skip(script.skip)
    # On failure: the file and line, the code with its line numbers, and the script's stderr.
    failure = readme_blocks.run(script)
    assert failure is None, failure
