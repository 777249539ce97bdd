"""Fill ``vendor/llama.cpp`` from the pinned upstream source distribution.

Run by CMake at configure time when the folder is empty; can also be run by hand.
The archive comes from the package index pip is configured with (``PIP_INDEX_URL`` or
pip's default), is checked against a pinned sha256, and is cached so that a clean
clone does not download it again. Standard library only: it runs inside pip's
isolated build environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

# The pin. llama-cpp-python's sdist carries upstream llama.cpp (MIT) in vendor/llama.cpp.
PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
FILENAME = "llama_cpp_python-0.3.36.tar.gz"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
UPSTREAM_COMMIT = "0c1e570"
INNER = "llama_cpp_python-0.3.36/vendor/llama.cpp/"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "langchain-llamacpp"


def index_url() -> str:
    """The simple-index URL pip would use, without naming any host here."""
    for var in ("LLAMACPP_INDEX_URL", "PIP_INDEX_URL"):
        if os.environ.get(var):
            return os.environ[var]
    # Ask pip (outside any isolated build environment) for its configured index.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONNOUSERSITE")}
    for code in (
        "from pip._internal.configuration import Configuration as C;"
        "c=C(isolated=False);c.load();print(dict(c.items()).get('global.index-url',''))",
        "from pip._internal.models.index import PyPI;print(PyPI.simple_url)",
    ):
        try:
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = ""
        if out:
            return out
    raise RuntimeError(
        "cannot determine the package index: set PIP_INDEX_URL, or point LLAMACPP_SOURCE_DIR at a llama.cpp source tree"
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_archive() -> Path:
    target = cache_dir() / FILENAME
    if target.exists() and sha256_of(target) == SHA256:
        return target
    url = index_url().rstrip("/") + f"/{PACKAGE}/"
    request = urllib.request.Request(url, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        files = json.load(response)["files"]
    matches = [f for f in files if f["filename"] == FILENAME]
    if not matches:
        raise RuntimeError(f"{FILENAME} not found on the package index {url}")
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"-- downloading {FILENAME} (llama.cpp {UPSTREAM_COMMIT})", file=sys.stderr)
    with (
        tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp,
        urllib.request.urlopen(matches[0]["url"], timeout=600) as response,
    ):
        shutil.copyfileobj(response, tmp)
    tmp_path = Path(tmp.name)
    got = sha256_of(tmp_path)
    if got != SHA256:
        tmp_path.unlink()
        raise RuntimeError(f"sha256 mismatch for {FILENAME}: expected {SHA256}, got {got}")
    tmp_path.replace(target)
    return target


def extract(archive: Path, dest: Path) -> None:
    staging = dest.with_name(dest.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        members = []
        for member in tar.getmembers():
            if not member.name.startswith(INNER):
                continue
            member.name = member.name[len(INNER) :]
            if member.name:
                members.append(member)
        try:
            tar.extractall(staging, members=members, filter="data")
        except TypeError:  # Python without extraction filters (< 3.10.12)
            tar.extractall(staging, members=members)
    (staging / "PINNED").write_text(f"{PACKAGE}=={VERSION} sha256={SHA256} llama.cpp={UPSTREAM_COMMIT}\n")
    shutil.rmtree(dest, ignore_errors=True)
    staging.replace(dest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", default=str(Path(__file__).parent / "llama.cpp"))
    parser.add_argument("--force", action="store_true", help="re-extract even if present")
    parser.add_argument(
        "--print-archive", action="store_true", help="fetch the verified source distribution and print its path"
    )
    args = parser.parse_args()
    if args.print_archive:
        print(download_archive())
        return 0
    dest = Path(args.dest)
    pinned = dest / "PINNED"
    if not args.force and pinned.exists() and SHA256 in pinned.read_text():
        return 0
    extract(download_archive(), dest)
    print(f"-- vendored llama.cpp {UPSTREAM_COMMIT} into {dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
