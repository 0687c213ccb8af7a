"""What a format reader yields: drafts of samples, skips, and input errors.

A reader parses one input file in the main process and yields a `Draft` per
sample: the sample's kind and fields, with each image still an `ImageRef`
(bytes already in hand, a file path, or an unfetchable URL). Reading image
files, validating them and encoding the record happens later, in worker
processes (`build.py`). A record that cannot become a sample yields a
`Skipped` with its reason; a file that cannot be read further raises
`InputError`, and the build goes on with the next file.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Sequence, Union

from bliperax.data import schema


class InputError(Exception):
  """An input file cannot be read (further): corrupt, truncated, not JSON."""

  def __init__(self, path: str, message: str):
    super().__init__(f"{path}: {message}")
    self.path = path
    self.message = message


@dataclasses.dataclass(frozen=True)
class Draft:
  """A sample before its images are read: `schema.KINDS[kind](id=id, **fields)`."""
  id: str
  kind: str
  fields: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A record that did not become a sample, and why (a `schema` reason)."""
  id: str
  reason: str
  message: str


Item = Union[Draft, Skipped]


@dataclasses.dataclass(frozen=True)
class ReaderOptions:
  """What readers need beyond the file itself.

  Attributes:
    image_dir: root of relative image paths (default: the input file's folder).
    task: caption task for caption formats ("caption", "ocr", "grounding").
    text_field: parquet column / webdataset JSON key of the caption.
    image_field: parquet column of the image (bytes, path, or {"bytes", "path"});
      empty for text-only samples.
    id_field: parquet column / JSON key of the sample id (empty: position).
  """
  image_dir: str | None = None
  task: str = "caption"
  text_field: str = "caption"
  image_field: str = "image"
  id_field: str = ""

  def image_root(self, input_path: str) -> str:
    """Where relative image paths of `input_path` point."""
    return self.image_dir or os.path.dirname(os.path.abspath(input_path))


def skip_on_invalid(record_id: str, make) -> Item:
  """`make()`, or a `Skipped` when it raises `InvalidSample`."""
  try:
    return make()
  except schema.InvalidSample as e:
    return Skipped(record_id, e.reason, e.message)


def malformed(message: str) -> schema.InvalidSample:
  """The error for a record that does not have its format's shape."""
  return schema.InvalidSample(schema.MALFORMED_RECORD, message)


def expand_inputs(spec: str, suffixes: Sequence[str]) -> list[str]:
  """Input files named by a comma-separated list of files, folders and globs.

  A folder stands for its files ending in one of `suffixes`; globs are sorted
  so every run reads the same order.

  Raises:
    FileNotFoundError: a name matches nothing.
  """
  files = []
  for part in filter(None, (p.strip() for p in spec.split(","))):
    if glob.has_magic(part):
      found = sorted(p for p in glob.glob(part) if os.path.isfile(p))
    elif os.path.isdir(part):
      found = sorted(os.path.join(part, n) for n in os.listdir(part)
                     if n.endswith(tuple(suffixes)) and not n.startswith("."))
    else:
      found = [part] if os.path.isfile(part) else []
    if not found:
      raise FileNotFoundError(f"no input file matches {part!r}")
    files.extend(found)
  if not files:
    raise FileNotFoundError("no input given")
  return files

