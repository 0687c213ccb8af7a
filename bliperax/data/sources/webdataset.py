"""WebDataset tars (DataComp, BLIP3-KALE/OCR/GROUNDING): one caption sample per key.

Members sharing a key (the path up to the first dot of the file name) form a
sample: `000123.jpg` + `000123.txt` and/or `000123.json`. The caption is the
`.txt` member if there is one, else the JSON's `text_field`. Tars are read as
a stream, one member at a time.
"""
from __future__ import annotations

import json
import os
import posixpath
import tarfile
import zlib
from typing import Iterator

from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import images

SUFFIXES = (".tar", ".tar.gz", ".tgz")
TRUNCATED_INPUT = "truncated_input"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")


def _split(name: str) -> tuple[str, str]:
  """WebDataset's (key, extension): the extension starts at the first dot."""
  folder, file = posixpath.split(name)
  stem, _, ext = file.partition(".")
  return posixpath.join(folder, stem), ext.lower()


def _caption(members: dict[str, bytes], options: base.ReaderOptions) -> tuple[str, dict]:
  meta = {}
  if "json" in members:
    try:
      meta = json.loads(members["json"])
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise base.malformed(f".json member is not JSON: {e}") from e
    if not isinstance(meta, dict):
      raise base.malformed(".json member is not an object")
  if "txt" in members:
    try:
      return members["txt"].decode("utf-8"), meta
    except UnicodeDecodeError as e:
      raise base.malformed(f".txt member is not UTF-8: {e}") from e
  text = meta.get(options.text_field)
  if text is None:
    raise schema.InvalidSample(schema.EMPTY_TEXT,
                               f"no .txt member and no {options.text_field!r} in .json")
  if not isinstance(text, str):
    raise base.malformed(f"{options.text_field!r} is a {type(text).__name__}")
  return text, meta


def _draft(key: str, members: dict[str, bytes], sample_id: str,
           options: base.ReaderOptions) -> base.Draft:
  image = next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)
  if image is None:
    raise schema.InvalidSample(images.MISSING_IMAGE,
                               f"key {key} has no image member ({', '.join(members)})")
  text, meta = _caption(members, options)
  if options.id_field and options.id_field in meta:
    sample_id = str(meta[options.id_field])
  return base.Draft(sample_id, "caption", {"image": images.ImageRef(data=image), "text": text,
                                           "task": options.task})


def _check_end(tar: tarfile.TarFile, f) -> None:
  """Raises unless the archive ends with a zero block where members stop.

  tarfile ends iteration silently at a cut-off or garbled header, which
  would lose the rest of a truncated download without a word.
  """
  if getattr(tar.fileobj, "comptype", "tar") != "tar":
    return  # compressed streams raise on truncation themselves
  f.seek(tar.offset)
  if f.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
    raise tarfile.ReadError(f"no end-of-archive block at byte {tar.offset} (truncated or "
                            "corrupt)")


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Drafts of the tar's samples, in member order."""
  name = os.path.basename(path)
  key, members = None, {}

  def flush():
    sample_id = f"{name}/{key}"
    return base.skip_on_invalid(sample_id, lambda: _draft(key, members, sample_id, options))

  try:
    with open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
      for member in tar:
        if not member.isfile():
          continue
        member_key, ext = _split(member.name)
        if member_key != key and members:
          yield flush()
          members = {}
        key = member_key
        members[ext] = tar.extractfile(member).read()
      _check_end(tar, f)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    if key is not None:  # the sample being read may be cut short: count it, do not guess
      yield base.Skipped(f"{name}/{key}", TRUNCATED_INPUT, f"tar breaks off in this sample: {e}")
    raise base.InputError(path, f"tar unreadable from key {key!r} on: "
                          f"{type(e).__name__}: {e}") from e
  if members:
    yield flush()
