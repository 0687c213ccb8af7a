"""Reading and writing a sweep's files, local or in a bucket (`gs://`), through etils.epath.

`pathlib.Path("gs://b/x")` silently becomes `gs:/b/x`, so every path of a sweep's
workdir goes through `path()`. A file is written whole or not at all: locally a
temporary file beside it renamed into place, in a bucket one object upload (which
the store shows only once complete), so a reader (`--collect`, a rerun) never sees
half a member.json.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, List, Optional, Union

from etils import epath

PathLike = Union[str, os.PathLike]


def is_remote(p: PathLike) -> bool:
  return "://" in os.fspath(p)


def path(p: PathLike) -> epath.Path:
  """`p` as an epath.Path: URLs as given, local paths made absolute."""
  p = os.fspath(p)
  return epath.Path(p if is_remote(p) else os.path.abspath(p))


def write_bytes(p: PathLike, data: bytes) -> None:
  p = path(p)
  if is_remote(p):
    p.write_bytes(data)
    return
  p.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.fspath(p.parent), prefix=f".{p.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would otherwise become the file's mode
    os.replace(tmp, os.fspath(p))
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text(p: PathLike, text: str) -> None:
  write_bytes(p, text.encode())


def write_json(p: PathLike, obj: Any) -> None:
  write_text(p, json.dumps(obj, indent=1) + "\n")


def read_json(p: PathLike) -> Optional[Any]:
  """The file's JSON, or None when it is missing or not (yet) valid JSON."""
  p = path(p)
  try:
    return json.loads(p.read_text())
  except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
    return None


def read_jsonl(p: PathLike) -> List[dict]:
  """The JSON objects of a .jsonl file; a line cut short (a writer killed mid-line)
  is skipped. Missing file: []."""
  try:
    text = path(p).read_text()
  except FileNotFoundError:
    return []
  out = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict):
      out.append(record)
  return out
