"""Decode speed from the release wheel (CPU variant chosen at run time) vs the source build (GGML_NATIVE).

    .venv/bin/python benchmarks/wheel.py [--wheel dist/X.whl | --wheel-python VENV/bin/python]
                                         [--model gemma3] [--rounds 9] [--threads 2]

The reference is this interpreter's package (the source build: `./dev build`); the measure is the wheel's:
the newest wheel in dist/ for this interpreter (or --wheel) installed into a fresh venv (dependencies from
pip's cache), or a venv named by --wheel-python; it runs from a temporary folder so that it imports the wheel.
Each side is one long-lived process holding the model, asked for one measure at a time, alternated
(`interleave`): the same model, threads, prompt and 128 greedy tokens through `stream()`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import interleave
from tests.models import get

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import sys, time
from langchain_llamacpp import LlamaCpp, native
story = "Once upon a time, in a small village at the edge of a great forest, there lived"
llm = LlamaCpp(model_path=sys.argv[1], n_threads=int(sys.argv[2]), temperature=0, repeat_penalty=1.0, n_ctx=512)
llm.invoke(story, max_tokens=4)  # load
info = native.system_info()
print(info.split("CPU_BACKEND = ")[1].split()[0] if "CPU_BACKEND" in info else "CPU backend built in", flush=True)
for _ in sys.stdin:
    stamps = [time.perf_counter() for piece in llm.stream(story, max_tokens=128) if piece]
    print((len(stamps) - 1) / (stamps[-1] - stamps[0]), flush=True)
"""


class Side:
    """One interpreter's package, holding the model, measuring on request."""

    def __init__(self, python: str, model: str, threads: int, cwd: str) -> None:
        self.proc = subprocess.Popen(
            [python, "-c", WORKER, model, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        self.banner = self.proc.stdout.readline().strip()

    def rate(self) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def newest_wheel() -> Path:
    """dist/'s newest wheel that this interpreter installs (cp3XX, or the abi3 one from 3.12 on)."""
    v = sys.version_info[:2]
    tag = "cp312-abi3" if v >= (3, 12) else f"cp{v[0]}{v[1]}-cp{v[0]}{v[1]}"
    wheels = sorted((ROOT / "dist").glob(f"langchain_llamacpp-*-{tag}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise SystemExit(f"no {tag} wheel in dist/: run ./dev wheel first")
    return wheels[-1]


def wheel_venv(wheel: Path, folder: Path) -> str:
    """A fresh venv in folder with the wheel installed; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = str(folder / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--wheel", type=Path, help="the wheel to install into a fresh venv (default: dist/'s newest)")
    parser.add_argument("--wheel-python", help="instead: the python of a venv with the wheel installed")
    parser.add_argument("--model", default="gemma3")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    model = str(get(args.model))
    with tempfile.TemporaryDirectory() as cwd:
        wheel_python = args.wheel_python
        if wheel_python is None:
            wheel_file = (args.wheel or newest_wheel()).resolve()
            print(f"installing {wheel_file.name} into a fresh venv", flush=True)
            wheel_python = wheel_venv(wheel_file, Path(cwd) / "venv")
        source = Side(sys.executable, model, args.threads, cwd)
        wheel = Side(wheel_python, model, args.threads, cwd)
        try:
            reference, series = interleave(args.rounds, source.rate, wheel=wheel.rate)
        finally:
            source.close()
            wheel.close()
    one = series["wheel"]
    print(f"source build ({source.banner}): {reference:.1f} tok/s")
    print(f"wheel ({wheel.banner}): {one.value()} tok/s, ratio {one.ratio()} over {args.rounds} rounds")


if __name__ == "__main__":
    main()
