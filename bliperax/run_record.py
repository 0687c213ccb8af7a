"""What a run was made with, recorded in its directory, so that a rerun resumes only the same run.

Running again on a workdir resumes it. That is right after an interruption and wrong
when the config or the code changed in between: the rerun would continue, or report
as done, a run that was made with something else. `check_or_write` records the
first time, in DIRECTORY/run_record.json, what the run is made with (see `make`: the
resolved config, a fingerprint of the bliperax code, inputs the caller names) and
compares on every later run: the same record resumes, a different one raises
`RunMismatch` with one line saying what differs and how to start fresh.

Callers name the dotted paths that may change on resume (`ignore`); the trainer
ignores `config.mesh` and `config.distributed`, which say where a run executes,
not what it computes (checkpoints reshard on restore). The stored record keeps the
first run's values of ignored paths.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Dict, Iterable, Optional, Sequence

from etils import epath

from bliperax import paths

FILENAME = "run_record.json"
_SHOWN = 3  # differing keys named in the message; the rest are counted
_VALUE_CHARS = 40  # long values (hashes, lists) are cut in the message
_PACKAGE = pathlib.Path(__file__).resolve().parent


class RunMismatch(Exception):
  """A directory holds a run made with something other than what this run would use."""


@functools.lru_cache(maxsize=None)
def code_fingerprint(*extra_files: str) -> str:
  """sha256 over the bliperax package's code and assets, plus `extra_files`.

  Why: a run resumed or reused after the code changed is not the run it claims to
  be. The package's .py files and everything under assets/ (the tokenizer shapes
  the data) count, by path relative to the package and contents, sorted by path;
  caches and editor files do not. A few MB: milliseconds, once per process.
  `extra_files` adds code outside the package (e.g. a tool script): its file name
  and contents, so the fingerprint does not depend on where the checkout lives.
  """
  files = [p for p in _PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts
           and (p.suffix == ".py" or p.relative_to(_PACKAGE).parts[0] == "assets")]
  digest = hashlib.sha256()
  for path in sorted(files, key=lambda p: p.relative_to(_PACKAGE).as_posix()):
    digest.update(path.relative_to(_PACKAGE).as_posix().encode() + b"\0")
    digest.update(path.read_bytes() + b"\0")
  for name in extra_files:
    path = pathlib.Path(name)
    digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
  return digest.hexdigest()


def make(config: Any = None, *, extra_code: Sequence[str] = (), **inputs: Any) -> Dict[str, Any]:
  """The record of a run: {"code": fingerprint, "config": ..., "inputs": {...}}.

  `config` is a ConfigDict (stored as its JSON, as checkpoints/config.json is) or a
  JSON-able dict; `inputs` are whatever else decides the result (a data path or an
  upstream record's `digest`); `extra_code` goes into the code fingerprint.
  """
  record: Dict[str, Any] = {"code": code_fingerprint(*map(str, extra_code))}
  if config is not None:
    record["config"] = (json.loads(config.to_json_best_effort())
                        if hasattr(config, "to_json_best_effort") else config)
  if inputs:
    record["inputs"] = inputs
  return _normalized(record)


def digest(record: Dict[str, Any]) -> str:
  """sha256 of a record: how a later stage names the upstream stage it was made from."""
  return hashlib.sha256(json.dumps(_normalized(record), sort_keys=True).encode()).hexdigest()


def check_or_write(directory: os.PathLike, record: Dict[str, Any], what: str,
                   ignore: Iterable[str] = (), fresh: Optional[str] = None,
                   resumable: bool = True) -> bool:
  """Writes `record` as the directory's record, or checks it against the one there.

  Returns True when an equal record was there (the same run: resume it), False when
  it was written now (a new run). Raises RunMismatch when the recorded run differs
  outside the dotted paths in `ignore` (a path covers everything under it), or when
  the directory has contents but no record (made before records were kept, or by
  something else). `what` names the run in the message; `fresh` says how to start
  over (default: remove the directory or pass another --workdir). With
  `resumable=False` the caller knows the recorded run left nothing to resume (it
  stopped before its first checkpoint, e.g. on a config error): a different record
  is replaced instead of refused, so fixing the config and rerunning just works.
  """
  directory = paths.resolve(directory)  # local or gs://
  path = directory / FILENAME
  fresh = fresh or f"remove {directory} or pass another --workdir"
  new = _normalized(record)
  if not path.exists():
    # Hidden entries are in-flight temporaries (this module's writes, the trainer's
    # write check), possibly another process's of the same run: not outputs.
    foreign = sorted(p.name for p in directory.iterdir()
                     if not p.name.startswith(".")) if directory.is_dir() else []
    if foreign:
      raise RunMismatch(
          f"{what} in {directory}: the directory holds {', '.join(foreign[:_SHOWN])} but no "
          f"record of what made them ({FILENAME}; made before records were kept?), so "
          f"it cannot be resumed as this run; to start fresh, {fresh}.")
    _write_atomically(path, new)
    return False
  old = json.loads(path.read_text())
  differing = _differences(old, new, tuple(ignore))
  if differing and not resumable:
    _write_atomically(path, new)
    return False
  if differing:
    shown = [f"{key} {_show(a)} -> {_show(b)}" for key, a, b in differing[:_SHOWN]]
    more = len(differing) - len(shown)
    listed = ", ".join(shown) + (f" and {more} more" if more else "")
    raise RunMismatch(
        f"{what} in {directory} was made with something other than this run: "
        f"{listed}. Resuming is only for the same run, so this one stops rather than "
        f"continue or reuse that one; to start fresh, {fresh}.")
  return True


def _normalized(record: Dict[str, Any]) -> Dict[str, Any]:
  """As the record reads back from JSON (tuples become lists), so equal means equal."""
  return json.loads(json.dumps(record, sort_keys=True))


def _write_atomically(path: epath.Path, record: Dict[str, Any]) -> None:
  # A reader (another process of the run, a crash) sees the whole record or none;
  # concurrent writers of one run write equal records.
  paths.write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


_ABSENT = object()


def _flatten(tree: Any, prefix: str = "") -> Dict[str, Any]:
  """Dotted path -> leaf (lists and empty dicts are leaves)."""
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flatten(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _differences(old: Dict[str, Any], new: Dict[str, Any], ignore: tuple) -> list:
  flat_old, flat_new = _flatten(old), _flatten(new)
  def ignored(key):
    return any(key == p or key.startswith(p + ".") for p in ignore)
  return [(key, flat_old.get(key, _ABSENT), flat_new.get(key, _ABSENT))
          for key in sorted(set(flat_old) | set(flat_new))
          if not ignored(key) and flat_old.get(key, _ABSENT) != flat_new.get(key, _ABSENT)]


def _show(value: Any) -> str:
  text = "<absent>" if value is _ABSENT else json.dumps(value)
  return text if len(text) <= _VALUE_CHARS else text[:_VALUE_CHARS - 3] + "..."
