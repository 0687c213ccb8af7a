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
# Bytes per element of every dtype the format defines, to validate headers even for
# dtypes this module does not convert.
ITEMSIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
             "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
             "BOOL": 1}


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or converted; the message names the file or tensor."""


class SafetensorsFile:
  """Lazy view of one .safetensors file: header parsed and checked at open, data on demand."""

  def __init__(self, path: os.PathLike):
    self.path = pathlib.Path(path)
    try:
      size = self.path.stat().st_size
      with open(self.path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
          raise CheckpointError(f"{self.path}: {size} bytes; too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > min(100_000_000, size - 8):
          raise CheckpointError(f"{self.path}: header length {n} exceeds the file "
                                f"({size} bytes); not a safetensors file, or truncated")
        header = json.loads(f.read(n))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{self.path}: not a readable safetensors file ({e})") from e
    if not isinstance(header, dict):
      raise CheckpointError(f"{self.path}: header is not a JSON object; not a safetensors file")
    self.metadata = header.pop("__metadata__", {}) or {}
    self.header: Dict[str, dict] = header
    self._data_start = 8 + n
    self._mmap: Optional[np.memmap] = None
    self._check_layout(size)

  def _check_layout(self, size: int) -> None:
    """Rejects malformed entries and truncated or padded files up front.

    Checked at open so that a damaged shard fails before any conversion work, with the
    tensor named, instead of as a reshape error deep inside a conversion.
    """
    end = 0
    for name, info in self.header.items():
      try:
        shape = [int(d) for d in info["shape"]]
        begin, stop = (int(o) for o in info["data_offsets"])
        dtype = str(info["dtype"])
      except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{self.path}: malformed header entry for tensor {name!r}") from e
      itemsize = ITEMSIZES.get(dtype)
      if itemsize is not None and stop - begin != itemsize * int(np.prod(shape, dtype=np.int64)):
        raise CheckpointError(
            f"{self.path}: tensor {name!r} {dtype}{shape} has {stop - begin} data bytes; "
            "its header is inconsistent")
      if begin < 0 or stop < begin:
        raise CheckpointError(f"{self.path}: tensor {name!r} has bad data_offsets")
      end = max(end, stop)
    if self._data_start + end != size:
      what = "truncated" if self._data_start + end > size else "has trailing bytes"
      raise CheckpointError(
          f"{self.path}: file {what} ({size} bytes; the header describes "
          f"{self._data_start + end})")

  def keys(self) -> List[str]:
    return list(self.header)

  def dtype_name(self, name: str) -> str:
    return self.header[name]["dtype"]

  def shape(self, name: str) -> Tuple[int, ...]:
    return tuple(self.header[name]["shape"])

  def _dtype(self, name: str) -> np.dtype:
    info = self.header[name]
    dtype = DTYPES.get(info["dtype"])
    if dtype is None:
      raise CheckpointError(f"{self.path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    return dtype

  def get(self, name: str) -> np.ndarray:
    """The tensor `name` as a read-only numpy view of the mapped file (zero copy)."""
    info = self.header[name]
    dtype = self._dtype(name)
    if self._mmap is None:
      self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
    begin, end = info["data_offsets"]
    raw = self._mmap[self._data_start + begin:self._data_start + end]
    return raw.view(dtype).reshape(info["shape"])

  def read(self, name: str) -> np.ndarray:
    """The tensor `name` as a fresh, owned, C-contiguous array (one copy, no mapping).

    Conversion uses this rather than `get`: pages of a memory map count towards the
    process's resident set until the kernel evicts them, so copying a whole model out
    of a map can show (and briefly need) twice its size. A plain read goes through the
    page cache only.
    """
    info = self.header[name]
    out = np.empty(info["shape"], self._dtype(name))
    begin, end = info["data_offsets"]
    buf = out.reshape(-1).view(np.uint8)
    with open(self.path, "rb") as f:
      f.seek(self._data_start + begin)
      got = f.readinto(memoryview(buf))
    if got != end - begin:
      raise CheckpointError(f"{self.path}: tensor {name!r}: read {got} of {end - begin} bytes "
                            "(file changed or truncated while reading)")
    return out


class CheckpointReader:
  """All tensors of an HF checkpoint directory: one model.safetensors or shards plus index."""

  def __init__(self, directory: os.PathLike):
    self.dir = pathlib.Path(directory)
    if not self.dir.is_dir():
      raise CheckpointError(f"{self.dir}: checkpoint directory does not exist")
    pickles = sorted(p.name for p in self.dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    files = sorted(self.dir.glob("*.safetensors"))
    index = self.dir / INDEX_NAME
    if not files and not index.exists():
      if pickles:
        raise CheckpointError(
            f"{self.dir}: only pickle checkpoint files ({', '.join(pickles)}); pickle is never "
            "loaded (it can run arbitrary code). Re-save the model with safetensors "
            "(`model.save_pretrained(dir, safe_serialization=True)`).")
      raise CheckpointError(f"{self.dir}: no *.safetensors file")
    self._where: Dict[str, SafetensorsFile] = {}
    # An index, when present, is authoritative (as in transformers): it names the
    # shards, and a shard it names but the directory lacks is an error of its own.
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
        if not isinstance(weight_map, dict):
          raise TypeError("weight_map is not an object")
      except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index}: not a valid index ({e!r})") from e
      opened: Dict[str, SafetensorsFile] = {}
      for name, fname in weight_map.items():
        if fname not in opened:
          if not (self.dir / fname).exists():
            raise CheckpointError(f"{index}: shard {fname} (holding {name!r}) is missing")
          opened[fname] = SafetensorsFile(self.dir / fname)
        if name not in opened[fname].header:
          raise CheckpointError(
              f"{self.dir / fname}: tensor {name!r} listed in the index is absent")
        self._where[name] = opened[fname]
    else:
      for f in files:
        sf = SafetensorsFile(f)
        for name in sf.keys():
          if name in self._where:
            raise CheckpointError(
                f"tensor {name!r} appears in both {self._where[name].path} and {f}")
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
    """Zero-copy memory-mapped view (see `SafetensorsFile.get`)."""
    return self._where[name].get(name)

  def read(self, name: str) -> np.ndarray:
    """Owned copy read from disk (see `SafetensorsFile.read`)."""
    return self._where[name].read(name)


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
        # Through a byte view: `tobytes()` would add a second copy of each tensor.
        f.write(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()
