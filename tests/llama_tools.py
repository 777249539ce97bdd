"""llama.cpp's own tools, built from the vendored tree into our build folder: the references that tests and
benchmarks compare with."""

from __future__ import annotations

import glob
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_dir() -> Path:
    dirs = sorted(glob.glob(str(ROOT / "build" / "cp*")))
    if not dirs:
        raise RuntimeError("build the package first: ./dev build")
    return Path(dirs[-1])


def llama_tool(name: str) -> Path:
    """Build (incrementally) and locate one of llama.cpp's tools, e.g. ``llama-embedding``."""
    build = build_dir()
    done = subprocess.run(["cmake", "--build", str(build), "--target", name], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"could not build {name}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    for candidate in build.rglob(name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(f"{name} was not built")


NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() in ("x86_64", "AMD64") else ""


def reference_tool(name: str) -> Path:
    """One of llama.cpp's tools built as upstream builds it by default (with OpenMP), in build/llama-reference.

    Our extension builds ggml without OpenMP and shares one thread pool between a model and its draft; a
    tool that gives each of its contexts a pool of its own (llama-speculative-simple) is then slowed by
    the two pools' spinning workers on few cores, so where a tool's speed is the reference, it is measured
    as its users build it."""
    build = ROOT / "build" / "llama-reference"
    if not (build / "CMakeCache.txt").exists():
        configure = [
            "cmake", "-S", str(ROOT / "vendor" / "llama.cpp"), "-B", str(build), "-G", "Ninja",
            "-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
            # Without AMX, as our extension is built (CMakeLists.txt: its tile instructions fault on VMs).
            f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}",
        ]  # fmt: skip
        if shutil.which("ccache"):
            configure += ["-DCMAKE_C_COMPILER_LAUNCHER=ccache", "-DCMAKE_CXX_COMPILER_LAUNCHER=ccache"]
        done = subprocess.run(configure, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"could not configure llama.cpp's reference build:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
    env = {**os.environ, "CCACHE_BASEDIR": str(ROOT), "CCACHE_NOHASHDIR": "true"}
    done = subprocess.run(["cmake", "--build", str(build), "--target", name], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"could not build {name}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    tool = build / "bin" / name
    if not tool.is_file():
        raise RuntimeError(f"{name} was not built")
    return tool


def llama_embedding(
    model: str, texts: list[str], *, pooling: str, normalize: int, n_ctx: int, threads: int
) -> list[list[float]]:
    """The vectors of ``llama-embedding`` for `texts` (one prompt each; none may contain a newline)."""
    assert all("\n" not in t for t in texts)
    args = [
        str(llama_tool("llama-embedding")),
        "-m", model,
        "-p", "\n".join(texts),
        "--pooling", pooling,
        "--embd-normalize", str(normalize),
        "--embd-output-format", "array",
        "-c", str(n_ctx), "-b", str(n_ctx), "-ub", str(n_ctx),
        "-t", str(threads),
    ]  # fmt: skip
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    vectors: list[list[float]] = json.loads(out[out.index("[[") :].strip())
    return vectors


# Printed (to stdout) by llama-mtmd-cli just before it evaluates the prompt, when this variable is set: the
# hook that llama.cpp's own tools/mtmd/tests.sh uses to find the response.
_MTMD_RESPONSE_MARKER = "<<<llama-mtmd-cli response follows>>>"


def llama_mtmd_cli(
    model: str,
    mmproj: str,
    image: str | list[str],
    prompt: str,
    *,
    n_predict: int,
    threads: int = 2,
    n_ctx: int = 512,
) -> str:
    """The text that ``llama-mtmd-cli`` generates greedily for one image (or several, at the prompt's
    markers, in order) and one prompt: exactly `n_predict`
    tokens (``--ignore-eos``: end-of-generation tokens get a -inf logit bias), their pieces concatenated as
    the tool prints them (``common_token_to_piece`` with special tokens rendered; bytes that are not valid
    UTF-8 become U+FFFD). Everything on CPU (``-ngl 0 --no-mmproj-offload``), no warmup, seed 0,
    ``--temp 0 --top-k 1`` (argmax; repetition penalties etc. are off by default).

    How mtmd-cli builds the prompt in this single-turn mode (``-p`` and ``--image`` both given;
    tools/mtmd/mtmd-cli.cpp, ``main`` and ``eval_message``):

    1. If the prompt does not contain the media marker ``<__media__>`` (``mtmd_default_marker()``), one
       marker per image is PREPENDED to it, with no separator: content = ``"<__media__>" + prompt``.
    2. The messages are ``[{"role": "user", "content": content}]`` alone (no system message unless ``-sys``),
       rendered with the model's ``tokenizer.chat_template`` through jinja (``--jinja`` is the default) with
       ``add_generation_prompt=True`` (``common_chat_format_single`` with an empty history). For ChatML:
       ``"<|im_start|>user\\n<__media__>" + prompt + "<|im_end|>\\n<|im_start|>assistant\\n"``.
    3. The rendered text is split on the marker; each text segment is tokenized ON ITS OWN with
       ``add_special=False, parse_special=True`` (so an SPM vocab adds its leading-space prefix to each
       segment), and the image's chunk goes between (``mtmd_tokenize_from_parts``). BOS is inserted at the
       start of the first text chunk iff ``llama_vocab_get_add_bos`` (add_special is true because the history
       is empty); EOS is appended iff ``llama_vocab_get_add_eos``.
    4. Chunks are decoded in order from position 0 (text in ``n_batch`` pieces with only the very last
       token's logits, the image's embeddings with ``mtmd_helper_decode_image_chunk``; a LLaVA-style image
       takes one position per embedding), then tokens are sampled and decoded one at a time.

    mtmd-cli cannot print logits or probabilities (nor can llama-mtmd-debug, which only runs the encoder on
    synthetic images): greedy text is the comparison. The image embeddings can be compared, though: with
    the environment variable ``MTMD_DEBUG_EMBEDDINGS=<path>``, libmtmd (clip.cpp) writes each encoded
    image's embeddings there as ``int32 n_tokens, int32 n_embd, float32[n_tokens * n_embd]``.

    stdout carries only the response (the logs go to stderr): the marker line below, a newline once the
    prompt is evaluated, each piece as it is sampled, then a newline at end of generation (not reached here)
    and two at exit. Run time with the tiny models of ``tests/tiny_vision.py``: 0.3 s
    for 24 tokens on 2 idle cores, several seconds when the cores are shared.
    """
    args = [
        str(llama_tool("llama-mtmd-cli")),
        "-m", model,
        "--mmproj", mmproj,
        *(arg for path in ([image] if isinstance(image, str) else image) for arg in ("--image", path)),
        "-p", prompt,
        "-n", str(n_predict),
        "--ignore-eos",
        "--temp", "0", "--top-k", "1", "--seed", "0",
        "--no-warmup",
        "-ngl", "0", "--no-mmproj-offload",
        "-c", str(n_ctx),
        "-t", str(threads),
        "-lv", "4",
    ]  # fmt: skip
    env = {**os.environ, "MTMD_TEST_RESPONSE_MARKER": _MTMD_RESPONSE_MARKER}
    for _ in range(5):
        done = subprocess.run(args, capture_output=True, env=env)
        log = done.stderr.decode(errors="replace")
        if done.returncode != 0:
            raise RuntimeError(f"llama-mtmd-cli failed ({done.returncode}):\n{log[-3000:]}")
        # The tool's logger is asynchronous and never joined: what is still queued at exit is lost, the
        # final newlines included (about one run in eight on a busy machine). The performance report
        # (stderr, shown at -lv 4) is queued after them: once it is there, stdout is complete.
        if "llama_perf_context_print:" in log:
            break
    else:
        raise RuntimeError(f"llama-mtmd-cli's output was cut short five times:\n{log[-3000:]}")
    out = done.stdout.decode("utf-8", errors="replace")
    head = _MTMD_RESPONSE_MARKER + "\n\n"
    start = out.index(head) + len(head)
    assert out.endswith("\n\n"), repr(out[-100:])
    return out[start:-2]
