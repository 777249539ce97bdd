"""The harness that runs README.md's blocks and the docstring examples (tests/readme_blocks.py), on
small texts and scripts that need no model."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from tests import readme_blocks
from tests.readme_blocks import Script

SAMPLE = """\
# Title

```bash
./dev test
```

```python
print("first")
```

<!-- skip: needs a GPU -->

```python
llm = LlamaCpp(model_path="model.gguf", n_gpu_layers=-1)
```

```python
await something()
```
"""


def test_markdown_blocks_are_found_with_their_lines_and_skip_reasons() -> None:
    blocks = readme_blocks.markdown_blocks(SAMPLE, Path("SAMPLE.md"))
    assert [(b.label, b.first_line, b.skip) for b in blocks] == [
        ("SAMPLE.md:8", 8, None),
        ("SAMPLE.md:14", 14, "needs a GPU"),
        ("SAMPLE.md:18", 18, None),
    ]
    assert blocks[0].source == 'print("first")\n'
    assert blocks[0].padded().splitlines()[7] == 'print("first")'  # line 8, as in the file


def test_an_unclosed_block_is_an_error() -> None:
    with pytest.raises(ValueError, match=re.escape("SAMPLE.md:3: a ```python block that is never closed")):
        readme_blocks.markdown_blocks("text\n\n```python\nprint(1)\n", Path("SAMPLE.md"))


def test_docstring_examples_are_one_script_with_the_module_line_numbers(tmp_path: Path) -> None:
    module = tmp_path / "module.py"
    module.write_text(
        textwrap.dedent('''\
        class Model:
            """A model.

            Instantiate:
                .. code-block:: python

                    llm = make("qwen.gguf")

            Invoke:
                .. code-block:: python

                    for x in llm.stream("a\\\\nb"):
                        print(x)
            """
        ''')
    )
    script = readme_blocks.docstring_script(module, "Model")
    assert script.label == "module.py:Model"
    lines = script.padded().splitlines()
    assert lines[6] == 'llm = make("qwen.gguf")'  # line 7 of the module
    assert lines[11:13] == ['for x in llm.stream("a\\nb"):', "    print(x)"]  # the escape as Python reads it
    assert readme_blocks.model_names(script.source) == ["qwen.gguf"]


def test_the_classes_docstrings_have_examples() -> None:
    for name, path in readme_blocks.DOCSTRING_CLASSES.items():
        script = readme_blocks.docstring_script(path, name)
        assert "import" in script.source and f"{name}(" in script.source


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "qwen"),
        ("Qwen3-4B-Q4_K_M.gguf", "qwen"),
        ("gemma-3-270m-q4_k_m.gguf", "gemma3"),
        ("nomic-embed-text-v1.5.f16.gguf", "nomic"),
        ("model.gguf", "gemma3"),
    ],
)
def test_model_names_map_to_test_models(name: str, model: str) -> None:
    assert readme_blocks.stand_in_for(name) == model


def test_an_unknown_model_name_is_an_error_not_a_guess() -> None:
    with pytest.raises(LookupError, match=re.escape("no test model stands in for 'llama-3-70b.gguf'")):
        readme_blocks.stand_in_for("llama-3-70b.gguf")


def test_globs_and_paths_are_not_model_names() -> None:
    source = 'f("*Q4_K_M.gguf"); g("dir/x.gguf"); h(\'y.gguf\')'
    assert readme_blocks.model_names(source) == ["y.gguf"]


def test_every_model_the_readme_and_docstrings_name_has_a_stand_in() -> None:
    scripts = [s for s in readme_blocks.all_scripts() if not s.skip]
    assert len(scripts) >= 10
    for script in scripts:
        for name in readme_blocks.model_names(script.source):
            readme_blocks.stand_in_for(name)  # raises LookupError for a name MODEL_MAP misses


def test_the_readme_keeps_the_dev_commands() -> None:
    text = readme_blocks.README.read_text()
    assert "./dev test" in text and "./dev example" in text


def test_a_script_that_runs_passes() -> None:
    assert readme_blocks.run(Script("SAMPLE.md:3", Path("SAMPLE.md"), 3, "x = 1\nassert x == 1\n")) is None


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("await asyncio.sleep(0)\n", "SyntaxError"),  # top-level await: the README's old "many calls" block
        ("x = {}\nprint(x['reasoning_content'])\n", "KeyError: 'reasoning_content'"),
        ("llm.batch(prompts)\n", "NameError: name 'llm' is not defined"),
    ],
)
def test_a_broken_block_fails_with_its_line_source_and_stderr(source: str, error: str) -> None:
    script = Script("SAMPLE.md:40", Path("SAMPLE.md"), 40, source)
    failure = readme_blocks.run(script)
    assert failure is not None
    assert failure.startswith("SAMPLE.md:40 (line 40 of SAMPLE.md) exited with 1")
    assert f"   40  {source.splitlines()[0]}" in failure  # the code, with the README's line numbers
    assert error in failure
    last_line = 40 + len(source.splitlines()) - 1
    assert f"line {last_line}" in failure  # the traceback points at the README's line


def test_a_block_that_hangs_is_stopped() -> None:
    script = Script("SAMPLE.md:5", Path("SAMPLE.md"), 5, "import time\ntime.sleep(60)\n")
    failure = readme_blocks.run(script, timeout=1)
    assert failure is not None and "did not finish in 1 s" in failure


def test_a_block_runs_in_a_fresh_folder_with_its_models_linked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "real.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr("tests.models.get", lambda key: model)
    source = 'import os\nassert open("my-qwen.gguf", "rb").read() == b"GGUF"\nassert os.listdir(".") != []\n'
    assert readme_blocks.run(Script("SAMPLE.md:1", Path("SAMPLE.md"), 1, source)) is None
