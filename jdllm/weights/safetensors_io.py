"""Minimal safetensors reader / writer on memory maps, with bfloat16 through `ml_dtypes`.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, then
raw bytes. Reading through `np.memmap` is lazy: a caller can slice a tensor (for sharded loading) without
reading the whole of it. The `safetensors` package's numpy backend cannot hold bfloat16, hence this module (and
no runtime dependency on that package; the tests check files both ways against it).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Iterable

import ml_dtypes
import numpy as np

from jdllm.weights.checkpoint_dir import read_json

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
        header, self._data_start = read_header(self.path)
        self.metadata = header.pop("__metadata__", None) or {}
        self.header = header
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


def _fail(path: str, what: str) -> ValueError:
    return ValueError(f"{path}: not a valid safetensors file: {what}")


def read_header(path: str) -> tuple[dict, int]:
    """Parse and check a safetensors header against the file (the checks of the reference `safetensors` crate).

    Returns (header, offset of the data). ValueError naming the file (and tensor) when the file is shorter than
    its 8-byte length prefix, the header length exceeds the file, the header is not a JSON object, a tensor has an
    unknown dtype, a bad shape, or data_offsets that do not fit its dtype x shape, overlap, leave a gap, or do
    not end exactly at the end of the file.
    """
    size = os.path.getsize(path)
    if size < 8:
        raise _fail(path, f"{size} bytes, shorter than the 8-byte header length (truncated?)")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8:
            raise _fail(path, f"header length {n} exceeds the {size - 8} bytes after the length prefix (truncated?)")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _fail(path, f"header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise _fail(path, f"header is a JSON {type(header).__name__}, not an object")
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise _fail(path, "__metadata__ is not an object")
    spans = sorted((_check_entry(path, name, info), name) for name, info in header.items() if name != "__metadata__")
    expect = 0
    for (begin, end), name in spans:
        if begin != expect:
            what = "overlaps the previous tensor" if begin < expect else f"leaves a gap of {begin - expect} bytes"
            raise _fail(path, f"tensor {name!r}: data_offsets [{begin}, {end}] {what}")
        expect = end
    if 8 + n + expect != size:
        raise _fail(path, f"the header's tensors end at byte {8 + n + expect}, but the file has {size} bytes"
                    + (" (truncated?)" if size < 8 + n + expect else ""))
    return header, 8 + n


def _check_entry(path: str, name: str, info) -> tuple[int, int]:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise _fail(path, f"tensor {name!r}: entry must hold dtype, shape and data_offsets, got {info!r}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if code not in _DTYPES:
        raise _fail(path, f"tensor {name!r}: unsupported dtype {code!r} (known: {', '.join(_DTYPES)})")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise _fail(path, f"tensor {name!r}: shape {shape!r} is not a list of non-negative integers")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]):
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end] with 0 <= begin <= end")
    nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[code].itemsize
    if offsets[1] - offsets[0] != nbytes:
        raise _fail(path, f"tensor {name!r}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes, but "
                    f"{code} x {shape} needs {nbytes}")
    return offsets[0], offsets[1]


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
        weight_map = read_index(index_path)
        files = {}
        for fn in sorted(set(weight_map.values())):
            if not os.path.isfile(os.path.join(directory, fn)):
                listing = sorted(n for n, f in weight_map.items() if f == fn)
                raise ValueError(f"{index_path}: lists {fn} (for {listing[0]!r} and {len(listing) - 1} more), "
                                 f"which is not in {directory}")
            files[fn] = SafetensorsFile(os.path.join(directory, fn))
        out = {}
        for name, fn in weight_map.items():
            if name not in files[fn].header:
                raise ValueError(f"{index_path}: lists {name!r} in {fn}, but that file does not hold it")
            out[name] = files[fn]
        for fn, st in files.items():
            unlisted = sorted(set(st.names()) - set(weight_map))
            if unlisted:
                raise ValueError(f"{st.path}: holds tensor {unlisted[0]!r}, which {index_path} does not list")
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


def read_index(index_path: str) -> dict[str, str]:
    """The `weight_map` of a `model.safetensors.index.json`; ValueError naming the file on bad JSON or layout."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path}: needs a 'weight_map' object of tensor name -> file name")
    bad = [v for v in weight_map.values() if os.path.basename(v) != v or not v.endswith(".safetensors")]
    if bad:
        raise ValueError(f"{index_path}: weight_map names {bad[0]!r}, not a .safetensors file of the directory")
    return weight_map


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
