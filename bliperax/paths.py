"""Paths that are local or in a bucket (`gs://...`): one way to name, list and write them.

A run's inputs and outputs (`root=` shards, `init=` parameters, `--workdir`, an
export's `--output`) may live on Google Cloud Storage, where a pod's hosts share
them. `pathlib.Path("gs://b/x")` silently becomes `gs:/b/x`, so every such path
goes through `resolve`, which gives an `etils.epath.Path`: the local filesystem
for plain paths (made absolute), gcsfs for `gs://` (and the other fsspec schemes
epath knows). Orbax and ArrayRecord read and write those URLs themselves.

Object stores have no rename of a directory and no append; the writers here use
what they do have: a single object is replaced whole (`write_text`), so a record
written with one call is never seen half-written.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterator, Sequence, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL (`gs://bucket/...`) rather than a local path."""
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: URLs as given, local paths absolute."""
  if is_remote(path):
    return epath.Path(os.fspath(path))
  return epath.Path(os.path.abspath(os.fspath(path)))


def write_text_atomic(path: PathLike, text: str) -> None:
  """Writes `text` so that a reader sees the old content or the new, never a part.

  Local: a temporary file beside it, then a rename. Remote: one object upload,
  which the store makes visible only once complete.
  """
  path = resolve(path)
  if is_remote(path):
    path.write_text(text)
    return
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.fspath(path.parent), prefix=f".{path.name}.",
                             suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.replace(tmp, os.fspath(path))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def files_under(path: epath.Path) -> Iterator[epath.Path]:
  """Every file below `path`, depth first (epath's `rglob` refuses `**` on buckets)."""
  for child in sorted(path.iterdir()):
    if child.is_dir():
      yield from files_under(child)
    else:
      yield child


def size(path: epath.Path) -> int:
  """A file's size in bytes, locally or in a bucket."""
  stat = path.stat()
  return int(getattr(stat, "st_size", None) or getattr(stat, "length", 0) or 0)


def relative(path: PathLike, root: PathLike) -> str:
  """`path` relative to `root` (both local, or both under one URL)."""
  path, root = os.fspath(path), os.fspath(root).rstrip("/")
  if not path.startswith(root + "/"):
    raise ValueError(f"{path} is not under {root}")
  return path[len(root) + 1:]


def common_parent(items: Sequence[PathLike]) -> str:
  """The deepest folder holding all `items` (local, or all under one URL scheme)."""
  items = [os.fspath(p) for p in items]
  schemes = {p.split("://", 1)[0] if is_remote(p) else "" for p in items}
  if len(schemes) != 1:
    raise ValueError(f"paths mix local and remote locations: {items[:3]}")
  scheme = schemes.pop()
  if not scheme:
    return os.path.commonpath(items)
  # os.path.commonpath would squeeze `gs://b` to `gs:/b`: compare after the scheme.
  common = os.path.commonpath(["/" + p.split("://", 1)[1] for p in items])
  return f"{scheme}://{common.lstrip('/')}"


def remove_tree(path: epath.Path) -> None:
  """Removes a file or a directory tree, if there."""
  if path.is_dir():
    path.rmtree()
  elif path.exists():
    path.unlink()
