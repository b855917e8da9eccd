"""Checkpoint directories: which format a directory holds, and atomic replacement of one.

A save never writes into the target directory. It writes a hidden temporary sibling
(`.<name>.jdllm-save-<pid>-<token>`), fsyncs every file and directory in it, then swaps it in: one atomic
`renameat2(RENAME_EXCHANGE)` where the OS offers it (Linux), else two renames (target -> `.<name>.jdllm-old-...`,
temporary -> target). The old checkpoint is deleted only after the new one is in place, so a save killed at any
point leaves the complete old checkpoint, the complete new one, or (between the two fallback renames only) no
directory and a load error that names the leftover sibling. Leftovers of a killed save are ignored by `load` and
deleted by the next save into the same target.

Files in the target that are not part of a checkpoint (`tokenizer.json`, `generation_config.json`,
`MODEL_CARD.md`, ...) are carried over into the new directory; checkpoint files of either format are not, so a
directory never holds two formats. A non-empty target that holds no checkpoint is refused (nothing is written).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import secrets
import shutil
from typing import Iterator, Literal

ORBAX_CONFIG = "jdllm_config.json"
ORBAX_PARAMS = "params"
HF_CONFIG = "config.json"
HF_INDEX = "model.safetensors.index.json"
SAVE_TAG, OLD_TAG = "jdllm-save", "jdllm-old"

Format = Literal["orbax", "hf"]


def orbax_files(directory: str) -> list[str]:
    return [n for n in (ORBAX_CONFIG, ORBAX_PARAMS) if os.path.exists(os.path.join(directory, n))]


def hf_weight_files(directory: str) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".safetensors") or n == HF_INDEX)


def is_checkpoint_file(name: str) -> bool:
    """Whether a directory entry belongs to a checkpoint (of either format) rather than riding along with it."""
    return name in (ORBAX_CONFIG, ORBAX_PARAMS, HF_CONFIG, HF_INDEX) or name.endswith(".safetensors")


def checkpoint_format(directory: str | os.PathLike) -> Format:
    """"orbax" or "hf" for a model directory; ValueError when it holds both (naming the files of each)."""
    directory = os.fspath(directory)
    orbax, hf = orbax_files(directory), hf_weight_files(directory)
    if orbax and hf:
        raise ValueError(f"{directory} holds two checkpoint formats: orbax ({', '.join(orbax)}) and HF "
                         f"({', '.join(hf)}); delete one of them or save again into an empty directory")
    return "orbax" if orbax else "hf"


def _sibling(target: str, tag: str) -> str:
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def leftovers(target: str | os.PathLike) -> list[str]:
    """Hidden siblings of `target` left by an interrupted save (temporary or old directories)."""
    parent, name = os.path.split(os.path.abspath(os.fspath(target)))
    if not os.path.isdir(parent):
        return []
    prefixes = (f".{name}.{SAVE_TAG}-", f".{name}.{OLD_TAG}-")
    return sorted(os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(prefixes))


def _pid_alive(path: str) -> bool:
    try:
        pid = int(os.path.basename(path).rsplit("-", 2)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str) -> None:
    """fsync every file and directory under `root` (files first, then their directory), then `root` itself."""
    for here, _, files in os.walk(root, topdown=False):
        for f in files:
            _fsync_path(os.path.join(here, f))
        _fsync_path(here)


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False where the OS / filesystem cannot."""
    libc_name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(libc_name, use_errno=True) if libc_name else None
    if libc is None or not hasattr(libc, "renameat2"):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _check_target(target: str) -> None:
    if os.path.exists(target) and not os.path.isdir(target):
        raise ValueError(f"cannot save to {target}: it is a file, not a directory")
    if os.path.isdir(target):
        names = os.listdir(target)
        if names and not any(is_checkpoint_file(n) for n in names):
            raise ValueError(f"cannot save to {target}: it holds files ({', '.join(sorted(names)[:3])}...) but no "
                             "checkpoint; save into an empty or new directory, or into an existing checkpoint")


def _carry_over(target: str, tmp: str) -> None:
    """Hard-link (or copy) the target's non-checkpoint entries into the new directory."""
    if not os.path.isdir(target):
        return
    for name in os.listdir(target):
        src, dst = os.path.join(target, name), os.path.join(tmp, name)
        if is_checkpoint_file(name) or os.path.exists(dst):
            continue
        if os.path.isdir(src) and not os.path.islink(src):
            shutil.copytree(src, dst, symlinks=True)
        else:
            try:
                os.link(src, dst, follow_symlinks=False)
            except OSError:
                shutil.copy2(src, dst, follow_symlinks=False)


def _swap_in(tmp: str, target: str) -> None:
    parent = os.path.dirname(target)
    if not os.path.exists(target):
        os.rename(tmp, target)
    elif _exchange(tmp, target):
        _fsync_path(parent)
        shutil.rmtree(tmp)  # now the old checkpoint
    else:
        old = _sibling(target, OLD_TAG)
        os.rename(target, old)
        os.rename(tmp, target)
        _fsync_path(parent)
        shutil.rmtree(old)
    _fsync_path(parent)


@contextlib.contextmanager
def atomic_checkpoint_dir(target: str | os.PathLike) -> Iterator[str]:
    """Yield a fresh temporary sibling of `target` to write a checkpoint into; on normal exit it replaces
    `target` atomically (see the module docstring), on an exception it is deleted and `target` is untouched."""
    target = os.path.abspath(os.fspath(target))
    _check_target(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    for stale in leftovers(target):
        if not _pid_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = _sibling(target, SAVE_TAG)
    os.mkdir(tmp)
    try:
        yield tmp
        _carry_over(target, tmp)
        fsync_tree(tmp)
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json(path: str) -> object:
    """The JSON value of a checkpoint file; ValueError naming the file when it is not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def read_json_object(path: str) -> dict:
    """`read_json` of a file that must hold a JSON object (config.json, jdllm_config.json)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(data).__name__}")
    return data
