"""Logging for jdllm: library modules log to `logging.getLogger("jdllm.<module>")` and never print.

The library adds no handler of its own (Python's logging convention for libraries), so an application decides
where messages go. The CLI calls `configure(verbosity)` once: `-q` shows warnings and errors only, the default
shows progress (INFO), `-v` adds details (DEBUG), each as one plain line on stderr.
"""

from __future__ import annotations

import logging
import sys

ROOT = "jdllm"
_LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


def get_logger(name: str) -> logging.Logger:
    """The logger of module `name` (pass `__name__`), a child of the `jdllm` logger."""
    if name != ROOT and not name.startswith(ROOT + "."):
        name = f"{ROOT}.{name}"
    return logging.getLogger(name)


def level_of(verbosity: int) -> int:
    """The logging level of a CLI verbosity: -1 (`-q`) WARNING, 0 INFO, 1 (`-v`) or more DEBUG."""
    if type(verbosity) is not int:
        raise TypeError(f"verbosity must be an int (-1, 0 or 1), got {verbosity!r}")
    return _LEVELS[max(-1, min(1, verbosity))]


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler writing to whatever `sys.stderr` is when a record is emitted (not when it was made)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def configure(verbosity: int = 0) -> logging.Logger:
    """Send the `jdllm` logger's messages at `level_of(verbosity)` and above to stderr, one plain line each.
    Calling it again replaces the handler it added before, so lines are never doubled."""
    logger = logging.getLogger(ROOT)
    logger.setLevel(level_of(verbosity))
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    return logger
