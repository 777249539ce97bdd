"""The package's logger, and llama.cpp's log lines forwarded to it.

Native threads never take the GIL to log: llama.cpp's lines are buffered natively
(`native/logging.cpp`) and forwarded here, by the caller's thread, after each call that may log.
"""

from __future__ import annotations

import logging
import sys

import langchain_llamacpp._native as _native

logger = logging.getLogger("langchain_llamacpp")
logger.addHandler(logging.NullHandler())  # a library never prints through logging's last resort
_native_logger = logging.getLogger("langchain_llamacpp.llama_cpp")

# ggml_log_level -> logging level
_LEVELS = {
    0: logging.INFO,
    1: logging.DEBUG,
    2: logging.INFO,
    3: logging.WARNING,
    4: logging.ERROR,
    5: logging.INFO,
}


def flush_native_logs(verbose: bool = False) -> None:
    """Forward buffered llama.cpp log lines to `logging` (and to stderr when verbose)."""
    lines = _native.drain_logs()
    for level, text in lines:
        _native_logger.log(_LEVELS.get(level, logging.INFO), "%s", text)
        if verbose:
            print(text, file=sys.stderr)
    if verbose and lines:
        sys.stderr.flush()
