"""Packaging: the wheel carries everything a non-editable install needs (recipes, the shipped model, the eval
tasks). Built from a copy of the sources, installed into a fresh virtualenv that sees the already installed
dependencies (jax, ...) but not this checkout, and run from there."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "jdllm", src / "jdllm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return next(out.glob("jdllm-*.whl"))


def test_wheel_holds_recipes_model_and_tasks(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("jdllm/configs/recipes.yaml", "jdllm/assets/models/arith-llada-tiny/model.safetensors",
                   "jdllm/assets/models/arith-llada-tiny/tokenizer_config.json",
                   "jdllm/eval/tasks/jdllm_arith.yaml", "jdllm/eval/tasks/jdllm_arith_mc.yaml",
                   "jdllm/eval/tasks/arith_test.jsonl", "jdllm/eval/tasks/utils.py"):
        assert needed in names, needed


def test_installed_wheel_runs_recipes_and_generate(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--force-reinstall",
                        str(wheel)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["JDLLM_COMPILE_CACHE"] = "0"
    where = subprocess.run([str(py), "-c", "import jdllm; print(jdllm.__file__)"], capture_output=True, text=True,
                           env=env, cwd=tmp_path, check=True).stdout.strip()
    assert Path(where).resolve().is_relative_to(venv.resolve()), where  # the wheel's copy, not this checkout
    jdllm_bin = str(venv / "bin" / "jdllm")
    r = subprocess.run([jdllm_bin, "recipes"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "fast_dllm_dual_parallel" in r.stdout, r.stderr
    q = "Tom has 12 apples. He buys 7. Then he loses 5. How many apples does Tom have?"
    r = subprocess.run([jdllm_bin, "generate", "--recipe", "fast_dllm_parallel", q], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().endswith("#### 14")
