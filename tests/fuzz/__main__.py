"""``python -m tests.fuzz worker <batch> <progress>`` (started by the runner) or ``replay <file>.json``."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import tests.fuzz
from tests.fuzz.common import ROOT
from tests.fuzz.worker import Targets, _outcome, worker


def main(argv: list[str]) -> int:
    if argv[:1] == ["worker"]:
        worker(argv[1], argv[2])
        return 0
    if argv[:1] == ["replay"]:
        case = json.loads(Path(argv[1]).read_text())
        tiny = str(ROOT / "build" / "test-models" / "tiny.gguf")
        with tempfile.TemporaryDirectory() as tmp:
            print(_outcome(lambda: Targets(tiny, tmp).run(case, 0)))
        return 0
    print(tests.fuzz.__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
