"""scripts/mutate.py itself: which one-line mutants it makes, what it never touches, and stable ids."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("mutate", Path(__file__).resolve().parents[1] / "scripts" / "mutate.py")
mutate = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("mutate", mutate)
_spec.loader.exec_module(mutate)

SOURCE = '''"""Module docstring with x < 1."""
import numpy as np


def f(x, y, flag=True):
    """Docstring: a + b."""
    if x < 0:
        raise ValueError(f"x < 0 is not allowed, got {x - 1}")
    print("x + y", x + y)
    z = max(x, y) * 2 if flag and not y else x // 3
    return np.argmax(z[: y]), x is not None


def g(a):
    return a - 1  # pragma: no mutate
'''


@pytest.fixture()
def mutants(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    return mutate.collect_mutants(path)


def _lines(ms):
    return {m.mutated.strip() for m in ms}


def test_mutants_are_the_expected_one_line_changes(mutants):
    got = _lines(mutants)
    assert "if x <= 0:" in got and "if x > 0:" in got and "if x < 1:" in got and "if x < -1:" in got
    assert "z = min(x, y) * 2 if flag and not y else x // 3" in got
    assert "z = max(x, y) / 2 if flag and not y else x // 3" in got
    assert "z = max(x, y) * 2 if flag or not y else x // 3" in got
    assert "z = max(x, y) * 2 if flag and y else x // 3" in got
    assert "z = max(x, y) * 2 if flag and not y else x / 3" in got
    assert "return np.argmin(z[: y]), x is not None" in got
    assert "return np.argmax(z[: (y) + 1]), x is not None" in got
    assert "return np.argmax(z[: y]), x is None" in got
    assert "def f(x, y, flag=False):" in got
    for m in mutants:  # exactly one line differs, and the mutant still parses
        assert m.original != m.mutated and m.original == SOURCE.splitlines()[m.line - 1]


def test_docstrings_strings_raise_print_and_pragma_are_never_mutated(mutants):
    touched = {m.line for m in mutants}
    src = SOURCE.splitlines()
    for text in ('"""Module docstring', '"""Docstring', "raise ValueError", 'print("x + y"', "return a - 1"):
        assert not any(src[i - 1].lstrip().startswith(text) for i in touched), text


def test_ids_are_unique_and_survive_edits_elsewhere(tmp_path, mutants):
    assert len({m.id for m in mutants}) == len(mutants)
    shifted = tmp_path / "m.py"
    shifted.write_text("# a new first line\n\n" + SOURCE)
    again = mutate.collect_mutants(shifted)
    assert {m.id for m in again} == {m.id for m in mutants}
    assert {m.id: m.line for m in again} == {m.id: m.line + 2 for m in mutants}


def test_unknown_target_group_is_refused():
    with pytest.raises(ValueError, match="unknown group"):
        mutate.load_targets(["no_such_group"])
