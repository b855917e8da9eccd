"""Minimal safetensors reader / writer on memory maps, with bfloat16 through `ml_dtypes`.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
raw bytes. Reading through `np.memmap` is lazy: a caller can slice a tensor (for sharded loading) without
reading the whole of it. The `safetensors` package's numpy backend cannot hold bfloat16, hence this module.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsFile:
    """Lazy view of one `.safetensors` file: `names()`, `shape(name)`, `get(name)` (a memory-mapped array)."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        with open(self.path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", {}) or {}
        self.header = header
        self._data_start = 8 + n
        self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")

    def names(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        code = self.header[name]["dtype"]
        if code not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name!r} has unsupported dtype {code}")
        return _DTYPES[code]

    def get(self, name: str) -> np.ndarray:
        info = self.header[name]
        begin, end = info["data_offsets"]
        raw = self._mmap[self._data_start + begin : self._data_start + end]
        return raw.view(self.dtype(name)).reshape(info["shape"])


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None):
    """Write `tensors` (numpy arrays, bfloat16 allowed) to a `.safetensors` file."""
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    arrays = []
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors")
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            f.write(arr.tobytes())


def open_checkpoint(directory: str | os.PathLike) -> dict[str, SafetensorsFile]:
    """Map every tensor name of an HF checkpoint directory to the file that holds it.

    Uses `model.safetensors.index.json` when present (and checks each listed file exists), else every
    `*.safetensors` file of the directory. A name stored twice is an error.
    """
    directory = str(directory)
    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index_path):
        with open(index_path) as f:
            weight_map: dict[str, str] = json.load(f)["weight_map"]
        files = {fn: SafetensorsFile(os.path.join(directory, fn)) for fn in sorted(set(weight_map.values()))}
        out = {}
        for name, fn in weight_map.items():
            if name not in files[fn].header:
                raise ValueError(f"index lists {name!r} in {fn}, but that file does not hold it")
            out[name] = files[fn]
        return out
    paths = sorted(p for p in os.listdir(directory) if p.endswith(".safetensors"))
    if not paths:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    out: dict[str, SafetensorsFile] = {}
    for p in paths:
        st = SafetensorsFile(os.path.join(directory, p))
        for name in st.names():
            if name in out:
                raise ValueError(f"tensor {name!r} appears in both {out[name].path} and {st.path}")
            out[name] = st
    return out


def write_sharded(tensors: dict[str, np.ndarray], directory: str | os.PathLike, n_files: int) -> list[str]:
    """Write an HF-style multi-file checkpoint with `model.safetensors.index.json`."""
    names = sorted(tensors)
    groups: Iterable[list[str]] = [names[i::n_files] for i in range(n_files)]
    weight_map, files = {}, []
    for k, group in enumerate(groups, 1):
        fn = f"model-{k:05d}-of-{n_files:05d}.safetensors"
        save_file({n: tensors[n] for n in group}, os.path.join(directory, fn))
        weight_map.update({n: fn for n in group})
        files.append(fn)
    total = int(sum(np.asarray(t).nbytes for t in tensors.values()))
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return files
