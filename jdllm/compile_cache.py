"""A persistent XLA compilation cache for the CLI and the bench.

A compiled `generate` program is written under the user's cache directory (`$JDLLM_CACHE_DIR`, else
`$XDG_CACHE_HOME/jdllm/xla`, else `~/.cache/jdllm/xla`) so the next process that decodes the same shapes loads it
instead of compiling (minutes for an 8B model on a TPU). `JDLLM_COMPILE_CACHE=0` (or the CLI's
`--no-compile-cache`) turns it off. Library calls (`jdllm.generate` from Python) do not touch global JAX
settings: a notebook opts in with `jdllm.compile_cache.enable()`.
"""

from __future__ import annotations

import os
from pathlib import Path

_ENV_OFF = "JDLLM_COMPILE_CACHE"
_ENV_DIR = "JDLLM_CACHE_DIR"


def default_dir() -> Path:
    if os.environ.get(_ENV_DIR):
        return Path(os.environ[_ENV_DIR])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jdllm" / "xla"


def disabled_by_env() -> bool:
    return os.environ.get(_ENV_OFF, "1").strip().lower() in ("0", "false", "no", "off")


def enable(path: str | os.PathLike | None = None, min_compile_s: float = 0.0) -> Path | None:
    """Point JAX's persistent compilation cache at `path` (default `default_dir()`); returns the directory, or
    None when `JDLLM_COMPILE_CACHE=0` turns it off or the directory cannot be created (the run goes on
    uncached: a cache is an optimisation, never a reason to fail)."""
    if disabled_by_env():
        return None
    import jax

    target = Path(path) if path is not None else default_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_s))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return target
