"""Directories that appear at their destination only once complete.

A checkpoint written in place and interrupted (an error, a full disk, a kill) would
leave a directory that looks like a checkpoint but is not one, and a later load would
fail on it, or worse, half succeed. `atomic_directory` writes into a temporary
directory beside the destination instead and renames it into place at the end:

  if is_occupied(dst) and not overwrite:
    raise ...                  # callers decide whether an existing one may go
  with atomic.atomic_directory(dst) as tmp:
    (tmp / "config.json").write_text(...)

Paths are local: a str, a pathlib.Path, or a local etils.epath.Path (any os.PathLike).
The rename is what makes the result all-or-nothing, and only a local filesystem
renames a directory in one step.
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Iterator

from bliperax import paths


def is_occupied(dst: os.PathLike) -> bool:
  """Whether writing `dst` would replace something: a file, or a non-empty directory.

  An empty directory does not count, so a destination made ahead of time (a mount
  point, a fresh `mkdir`) can be written without asking to overwrite.
  """
  dst = paths.resolve(dst)  # also asked of bucket destinations (gs://)
  return dst.exists() and (not dst.is_dir() or any(dst.iterdir()))


@contextlib.contextmanager
def atomic_directory(dst: os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a temporary directory that becomes `dst` when the block succeeds.

  The temporary directory is created beside `dst` (same filesystem, so the final
  `os.replace` is a rename, not a copy), hidden as `.NAME.XXXX`, with mode 0755 as a
  directory made by `mkdir` would have. `dst`'s parent directories are created.

  On success, an existing `dst` (a file, or a directory with its contents) is removed
  and the temporary directory renamed to `dst`. Removing and renaming are two steps:
  a crash between them leaves neither the old nor the new `dst`, but never a partial
  one. Whether an existing `dst` may be replaced at all is for the caller to check
  first (`is_occupied`).

  On an exception in the block (or in the replacing), the temporary directory is
  removed and the exception propagates; an earlier `dst` is untouched unless the
  failure came after its removal.

  Args:
    dst: the directory to create or replace (a local path).
  Yields:
    The temporary directory (a pathlib.Path) to write into.
  """
  dst = pathlib.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  os.chmod(tmp, 0o755)  # mkdtemp's 0700 would otherwise become the destination's mode
  try:
    yield tmp
    _replace(tmp, dst)
  finally:
    if tmp.exists():  # after a successful rename it does not
      shutil.rmtree(tmp)


def _replace(tmp: pathlib.Path, dst: pathlib.Path) -> None:
  """Moves `tmp` to `dst`, removing whatever is at `dst` first.

  `os.replace` alone would fail on a non-empty directory (and replace an empty one).
  """
  if dst.exists():
    shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
  os.replace(tmp, dst)
