"""Seeded fuzzing of what the package reads from outside: GGUF files, GBNF grammars, JSON schemas, chat templates,
prompt cache files.

Cases are plain JSON-able dicts ({"kind", "desc", ...}), generated here from a seed. They run in a worker
process (``python -m tests.fuzz worker``), many to a process, each announced in a progress file before it
runs, so that when the worker dies or hangs the runner knows which input did it, records it, and starts a
fresh worker at the next case. The worker sends its own stdout and stderr into a file and checks after
every case that nothing was written: with ``verbose=False`` the package prints nothing, on any input.

    python -m tests.fuzz replay build/fuzz-failures/<file>.json   # run one saved case here, in this process

Modules: ``common`` (paths, limits, seeds), ``gguf_format`` and ``gguf``, ``grammars``, ``schemas``, ``prompt_cache``,
``templates`` (the cases of each kind), ``worker`` (runs cases, in the worker process), ``runner`` (runs
workers, reports failures).
"""

from __future__ import annotations

from tests.fuzz.common import Case, iterations, seed_for
from tests.fuzz.gguf import PATHOLOGICAL_GGUF, gguf_cases, pathological_gguf_case
from tests.fuzz.grammars import grammar_cases, pathological_grammars
from tests.fuzz.prompt_cache import prompt_cache_cases
from tests.fuzz.runner import Result, confirm_templates, report, rounds, run_cases
from tests.fuzz.schemas import pathological_schemas, schema_cases
from tests.fuzz.templates import (
    pathological_template_cases,
    pathological_templates,
    template_mutation_cases,
    template_prefix_cases,
    template_sources,
)

__all__ = [
    "PATHOLOGICAL_GGUF",
    "Case",
    "Result",
    "confirm_templates",
    "gguf_cases",
    "grammar_cases",
    "iterations",
    "pathological_gguf_case",
    "pathological_grammars",
    "pathological_schemas",
    "pathological_template_cases",
    "pathological_templates",
    "prompt_cache_cases",
    "report",
    "rounds",
    "run_cases",
    "schema_cases",
    "seed_for",
    "template_mutation_cases",
    "template_prefix_cases",
    "template_sources",
]
