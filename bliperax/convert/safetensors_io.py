"""Reading and writing safetensors checkpoints tensor by tensor (never pickle).

Written by hand rather than through `safetensors.numpy` because (1) numpy has no
bfloat16 there, while the released checkpoints and our bf16 exports need it
(`ml_dtypes.bfloat16` here), (2) reads are zero-copy memory maps, and (3) writes
stream one tensor at a time to a temporary file renamed into place, so exporting a
14B model never holds a second copy of a shard in memory and a failed write never
leaves a file that looks complete. The format is the public one: 8-byte little-endian
header length, a JSON header {name: {dtype, shape, data_offsets}}, then the data.
"""
from __future__ import annotations

import json
import os
import pathlib
import struct
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import ml_dtypes
import numpy as np

DTYPES = {
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype(np.float64),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOAT_DTYPES = ("F32", "BF16", "F16")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or converted; the message names the file or tensor."""


class SafetensorsFile:
  """Lazy, memory-mapped view of one .safetensors file."""

  def __init__(self, path: os.PathLike):
    self.path = pathlib.Path(path)
    try:
      with open(self.path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
          raise CheckpointError(f"{self.path}: header of {n} bytes; not a safetensors file")
        header = json.loads(f.read(n))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from e
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header: Dict[str, dict] = header
    self._data_start = 8 + n
    self._mmap: Optional[np.memmap] = None

  def keys(self) -> List[str]:
    return list(self.header)

  def dtype_name(self, name: str) -> str:
    return self.header[name]["dtype"]

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def get(self, name: str) -> np.ndarray:
    """The tensor `name` as a read-only numpy view of the mapped file."""
    info = self.header[name]
    dtype = DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    begin, end = info["data_offsets"]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(dtype).reshape(info["shape"])


class CheckpointReader:
  """All tensors of an HF checkpoint directory: one model.safetensors or shards plus index."""

  def __init__(self, directory: os.PathLike):
    self.dir = pathlib.Path(directory)
    if not self.dir.is_dir():
      raise CheckpointError(f"{self.dir}: checkpoint directory does not exist")
    pickles = sorted(p.name for p in self.dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    files = sorted(self.dir.glob("*.safetensors"))
    if not files:
      if pickles:
        raise CheckpointError(
            f"{self.dir}: only pickle checkpoint files ({', '.join(pickles)}); pickle is never "
            "loaded (it can run arbitrary code). Re-save the model with safetensors "
            "(`model.save_pretrained(dir, safe_serialization=True)`).")
      raise CheckpointError(f"{self.dir}: no *.safetensors file")
    index = self.dir / INDEX_NAME
    self._where: Dict[str, SafetensorsFile] = {}
    if index.exists():
      weight_map = json.loads(index.read_text())["weight_map"]
      opened: Dict[str, SafetensorsFile] = {}
      for name, fname in weight_map.items():
        if fname not in opened:
          if not (self.dir / fname).exists():
            raise CheckpointError(f"{index}: shard {fname} (holding {name!r}) is missing")
          opened[fname] = SafetensorsFile(self.dir / fname)
        if name not in opened[fname].header:
          raise CheckpointError(f"{self.dir / fname}: tensor {name!r} listed in the index is absent")
        self._where[name] = opened[fname]
    else:
      for f in files:
        sf = SafetensorsFile(f)
        for name in sf.keys():
          if name in self._where:
            raise CheckpointError(f"tensor {name!r} appears in both {self._where[name].path} and {f}")
          self._where[name] = sf

  def keys(self) -> List[str]:
    return list(self._where)

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def file_of(self, name: str) -> pathlib.Path:
    return self._where[name].path

  def dtype_name(self, name: str) -> str:
    return self._where[name].dtype_name(name)

  def shape(self, name: str) -> Tuple[int, ...]:
    return self._where[name].shape(name)

  def get(self, name: str) -> np.ndarray:
    return self._where[name].get(name)


def _header_for(specs: Iterable[Tuple[str, np.dtype, Tuple[int, ...]]],
                metadata: Mapping[str, str]) -> bytes:
  header: Dict[str, object] = {"__metadata__": dict(metadata)}
  offset = 0
  for name, dtype, shape in specs:
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    header[name] = {"dtype": DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # pad so tensor data starts 8-byte aligned
  return struct.pack("<Q", len(raw)) + raw


def write_file(path: os.PathLike, specs: List[Tuple[str, np.dtype, Tuple[int, ...]]],
               tensors: Iterator[Tuple[str, np.ndarray]],
               metadata: Mapping[str, str] = (("format", "pt"),)) -> None:
  """Streams tensors into `path` in the order of `specs`; atomic (tmp file + rename).

  Args:
    specs: (name, dtype, shape) of every tensor, in file order (needed up front for
      the header).
    tensors: yields (name, array) in the same order; each is written then dropped.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  try:
    with open(tmp, "wb") as f:
      f.write(_header_for(specs, dict(metadata)))
      for (name, dtype, shape), (got_name, array) in zip(specs, tensors, strict=True):
        if got_name != name or array.shape != tuple(shape) or array.dtype != dtype:
          raise CheckpointError(
              f"{path}: tensor {got_name!r} {array.dtype}{list(array.shape)} does not match its "
              f"header entry {name!r} {np.dtype(dtype)}{list(shape)}")
        f.write(np.ascontiguousarray(array).tobytes())
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
