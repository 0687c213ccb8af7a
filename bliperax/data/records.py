"""ArrayRecord shards of encoded samples: naming, atomic writing, reading.

Records are the bytes of `schema.encode`. Shards are ArrayRecord files written
with `group_size:1` (one record per chunk, so any record is read without its
neighbours), named `{prefix}-{i:05d}-of-{n:05d}.array_record`. `ShardSetWriter`
writes a set under `*.tmp` names and renames them only once every shard is
complete, so a killed build leaves no file that `open_shards` accepts.
"""
from __future__ import annotations

import glob
import os
import pathlib
import re
from typing import Iterator, Sequence

from bliperax import paths as storage  # `paths` names arguments here
from bliperax.data import schema

SHARD_SUFFIX = ".array_record"
TMP_SUFFIX = ".tmp"

_SHARD_NAME = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})"
                         + re.escape(SHARD_SUFFIX))


def shard_name(prefix: str, index: int, count: int) -> str:
  """File name of shard `index` of `count`."""
  return f"{prefix}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def _shard_files(directory: pathlib.Path, prefix: str) -> list[pathlib.Path]:
  return sorted(p for p in directory.glob(f"{glob.escape(prefix)}-*{SHARD_SUFFIX}")
                if (m := _SHARD_NAME.fullmatch(p.name)) and m["prefix"] == prefix)


class ShardSetWriter:
  """Writes records round-robin into `num_shards` ArrayRecord files, atomically.

  Record i goes to shard `i % num_shards`, so shards differ by at most one
  record. Files are written as `<name>.tmp`; `commit()` syncs and renames them
  all, then removes shards of an older set with the same prefix. `abort()` (or
  leaving a `with` block by an exception) deletes the temporary files. Stale
  `.tmp` files of the prefix are removed on start.
  """

  def __init__(self, directory: str | os.PathLike, prefix: str, num_shards: int,
               overwrite: bool = False):
    from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not prefix or "/" in prefix:
      raise ValueError(f"bad shard prefix {prefix!r}")
    self.directory = pathlib.Path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    self.prefix = prefix
    old = _shard_files(self.directory, prefix)
    if old and not overwrite:
      raise FileExistsError(f"{self.directory} already holds shards {old[0].name}...; pass "
                            "overwrite=True (--overwrite) to replace them")
    for stale in self.directory.glob(f"{glob.escape(prefix)}-*{SHARD_SUFFIX}{TMP_SUFFIX}"):
      m = _SHARD_NAME.fullmatch(stale.name[:-len(TMP_SUFFIX)])
      if m and m["prefix"] == prefix:  # not another prefix's build in progress
        stale.unlink()
    self.paths = [self.directory / shard_name(prefix, i, num_shards) for i in range(num_shards)]
    self.counts = [0] * num_shards
    self._writers = [array_record_module.ArrayRecordWriter(self._tmp(p), "group_size:1")
                     for p in self.paths]
    self._next = 0
    self._done = False

  @staticmethod
  def _tmp(path: pathlib.Path) -> str:
    return str(path) + TMP_SUFFIX

  def write(self, record: bytes) -> None:
    """Appends one encoded record to the next shard."""
    i = self._next
    self._writers[i].write(record)
    self.counts[i] += 1
    self._next = (i + 1) % len(self._writers)

  def _close_writers(self) -> None:
    for w in self._writers:
      w.close()
    self._writers = []

  def commit(self) -> list[tuple[pathlib.Path, int]]:
    """Finishes every shard and makes the set visible; returns (path, count)."""
    self._close_writers()
    for path in self.paths:
      _fsync(self._tmp(path))
    for path in self.paths:
      os.replace(self._tmp(path), path)
    new = set(self.paths)
    for old in _shard_files(self.directory, self.prefix):
      if old not in new:
        old.unlink()
    _fsync(str(self.directory))
    self._done = True
    return list(zip(self.paths, self.counts))

  def abort(self) -> None:
    """Deletes the temporary files; nothing becomes visible."""
    if self._done:
      return
    self._close_writers()
    for path in self.paths:
      pathlib.Path(self._tmp(path)).unlink(missing_ok=True)
    self._done = True

  def __enter__(self) -> "ShardSetWriter":
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None or not self._done:
      self.abort()


def _listing(pattern: str) -> list[str]:
  """The shard files a directory or glob names, locally or in a bucket (`gs://`)."""
  if storage.is_remote(pattern):
    directory = storage.resolve(pattern)
    if not directory.is_dir():  # a glob over file names: gs://b/set/caption-*
      directory, name = directory.parent, directory.name
      return sorted(str(p) for p in directory.glob(name) if _SHARD_NAME.fullmatch(p.name))
    return sorted(str(p) for p in directory.iterdir() if _SHARD_NAME.fullmatch(p.name))
  if os.path.isdir(pattern):
    return [str(p) for p in sorted(pathlib.Path(pattern).iterdir())
            if _SHARD_NAME.fullmatch(p.name)]
  return sorted(p for p in glob.glob(pattern) if _SHARD_NAME.fullmatch(os.path.basename(p)))


def _expand(pattern: str) -> list[str]:
  """Shards named by a directory or a glob; checks that each set is complete."""
  found = _listing(pattern)
  if not found:
    raise FileNotFoundError(f"no {SHARD_SUFFIX} shards match {pattern!r}")
  sets = {}
  for path in found:
    m = _SHARD_NAME.fullmatch(os.path.basename(path))
    sets.setdefault((os.path.dirname(path), m["prefix"], int(m["count"])), set()).add(
        int(m["index"]))
  for (directory, prefix, count), indices in sets.items():
    if len(indices) != count:
      missing = sorted(set(range(count)) - indices)
      raise FileNotFoundError(f"incomplete shard set {directory}/{prefix}-*-of-{count:05d}: "
                              f"missing shard(s) {missing[:5]}")
  return found


def shard_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
  """Resolves shard paths, directories and glob patterns to shard files.

  Paths may be local or in a bucket (`gs://bucket/shards/caption`; ArrayRecord
  reads those itself). Explicit file paths are kept as given (a host may read a
  subset of a set); directories and globs must name complete sets. `.tmp` files, left by a
  build that did not finish, are never accepted.
  """
  if isinstance(paths, (str, os.PathLike)):
    paths = [paths]
  out = []
  for p in map(os.fspath, paths):
    if p.endswith(TMP_SUFFIX):
      raise ValueError(f"{p} is an unfinished shard (a build was interrupted)")
    if storage.resolve(p).is_file():
      out.append(p)
    else:
      out.extend(_expand(p))
  if not out:
    raise ValueError("no shard paths given")
  return out


def open_shards(paths: str | os.PathLike | Sequence[str | os.PathLike]):
  """A random-access source of encoded records over shards, in path order.

  Returns an `ArrayRecordDataSource` (`len`, `__getitem__`, `__getitems__`;
  picklable, so Grain workers can use it). Items are record bytes: map
  `schema.decode` over them, so a corrupt record can be skipped and counted
  instead of failing the reader.

  Args:
    paths: shard files, directories of shards, or glob patterns.
  """
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
  return array_record_data_source.ArrayRecordDataSource(shard_paths(paths))


def read_samples(paths: str | os.PathLike | Sequence[str | os.PathLike]
                 ) -> Iterator[schema.Sample]:
  """Decodes every sample of the shards in order (for tools and tests)."""
  source = open_shards(paths)
  for i in range(len(source)):
    yield schema.decode(source[i])
