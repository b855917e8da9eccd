"""`jdllm --help` and argument errors must not import JAX (they answer in well under a second); the persistent
compilation cache is used by the CLI and can be turned off."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jdllm import compile_cache

_NO_JAX = (
    "import sys, contextlib, io\n"
    "import jdllm, jdllm.cli\n"
    "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
    "    try:\n"
    "        jdllm.cli.main({argv!r})\n"
    "    except SystemExit:\n"
    "        pass\n"
    "assert 'jax' not in sys.modules, 'jax was imported'\n"
)


@pytest.mark.parametrize("argv", [["--help"], ["generate", "--help"], ["bench", "--n", "x"],
                                  ["generate", "--gen-length", "x", "q"]])
def test_help_and_argument_errors_do_not_import_jax(argv):
    r = subprocess.run([sys.executable, "-c", _NO_JAX.format(argv=argv)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_compile_cache_dir_and_off_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("JDLLM_CACHE_DIR", str(tmp_path / "xla"))
    assert compile_cache.default_dir() == tmp_path / "xla"
    monkeypatch.setenv("JDLLM_COMPILE_CACHE", "0")
    assert compile_cache.enable() is None and not (tmp_path / "xla").exists()


def test_cli_writes_the_compile_cache(tmp_path):
    env = dict(os.environ, JDLLM_CACHE_DIR=str(tmp_path / "xla"), JDLLM_COMPILE_CACHE="1")
    q = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    r = subprocess.run([sys.executable, "-m", "jdllm.cli", "generate", "--model", "arith-llada-tiny", q], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert any((tmp_path / "xla").iterdir()), "no compiled program was written to the cache"
    r = subprocess.run([sys.executable, "-m", "jdllm.cli", "generate", "--model", "arith-llada-tiny", "--no-compile-cache", q],
                       capture_output=True, text=True, env=dict(env, JDLLM_CACHE_DIR=str(tmp_path / "off")))
    assert r.returncode == 0 and not (tmp_path / "off").exists()
