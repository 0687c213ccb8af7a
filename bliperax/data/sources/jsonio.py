"""Streaming JSON input: JSONL line by line, and a JSON array element by element.

LLaVA-style datasets ship one JSON array of ~1M conversations (~1 GB); it is
read in chunks and decoded one element at a time, so memory stays bounded by
the largest element, never the file.
"""
from __future__ import annotations

import json
import os
from typing import Iterator

from bliperax.data.sources import base

_CHUNK_CHARS = 1 << 20
# An element still undecodable after this much text is taken as a syntax
# error rather than read to the end of the file.
MAX_ELEMENT_CHARS = 1 << 27
_WHITESPACE = " \t\r\n"


def iter_lines(path: str) -> Iterator[tuple[int, str]]:
  """(1-based line number, line) of every non-blank line."""
  with open(path, "r", encoding="utf-8", errors="strict") as f:
    try:
      for number, line in enumerate(f, 1):
        if line.strip():
          yield number, line
    except UnicodeDecodeError as e:
      raise base.InputError(path, f"not UTF-8 after line {number}: {e}") from e


class _BadLine:
  """Stands for a JSONL line that is not JSON (its error kept for the skip)."""

  def __init__(self, error: json.JSONDecodeError):
    self.error = error


def iter_records(path: str) -> Iterator[tuple[str, object]]:
  """(position, element) of a JSONL file or a JSON array (by file suffix).

  The position ("file:line" or "file[index]") identifies a record that has
  no id of its own. A JSONL line that is not JSON comes as a placeholder that
  `require_object` turns into a malformed_record skip, so one bad line does
  not stop the file.
  """
  name = os.path.basename(path)
  if path.endswith(".jsonl"):
    for number, line in iter_lines(path):
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        obj = _BadLine(e)
      yield f"{name}:{number}", obj
  else:
    for index, obj in iter_array(path):
      yield f"{name}[{index}]", obj


def require_object(obj) -> dict:
  """The record as a dict, or InvalidSample(malformed_record)."""
  if isinstance(obj, _BadLine):
    raise base.malformed(f"not JSON: {obj.error}")
  if not isinstance(obj, dict):
    raise base.malformed(f"a JSON {type(obj).__name__}, not an object")
  return obj


def record_id(obj, position: str) -> str:
  """The record's own "id" if it has one, else its position."""
  if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)):
    return str(obj["id"])
  return position


class _Buffer:
  """A window of a text file: `text[pos:]` is what is not consumed yet."""

  def __init__(self, f):
    self.f = f
    self.text = ""
    self.pos = 0
    self.consumed = 0  # characters dropped before `text`, for error offsets
    self.eof = False

  def more(self) -> bool:
    chunk = self.f.read(_CHUNK_CHARS)
    if not chunk:
      self.eof = True
      return False
    self.consumed += self.pos
    self.text = self.text[self.pos:] + chunk
    self.pos = 0
    return True

  def peek(self) -> str:
    """The next non-blank character ("" at end of file), not consumed."""
    while True:
      while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
        self.pos += 1
      if self.pos < len(self.text) or not self.more():
        return self.text[self.pos:self.pos + 1]

  def offset(self, pos: int | None = None) -> int:
    return self.consumed + (self.pos if pos is None else pos)


def iter_array(path: str) -> Iterator[tuple[int, object]]:
  """(index, element) of a top-level JSON array, decoded one at a time.

  Raises:
    InputError: the file is not a JSON array or has a syntax error (the
      elements before it have been yielded).
  """
  decoder = json.JSONDecoder()
  with open(path, "r", encoding="utf-8") as f:
    buf = _Buffer(f)
    try:
      if buf.peek() != "[":
        raise base.InputError(path, "not a JSON array (does not start with '[')")
      buf.pos += 1
      if buf.peek() == "]":
        return
      index = 0
      while True:
        buf.peek()
        while True:
          try:
            element, end = decoder.raw_decode(buf.text, buf.pos)
            # A bare number at the end of the window may continue past it.
            if end < len(buf.text) or buf.eof:
              break
          except json.JSONDecodeError as e:
            if buf.eof or len(buf.text) - buf.pos > MAX_ELEMENT_CHARS:
              raise base.InputError(path, f"JSON syntax error in element {index} at "
                                    f"character {buf.offset(e.pos)}: {e.msg}") from e
          buf.more()
        buf.pos = end
        yield index, element
        index += 1
        sep = buf.peek()
        if sep == "]":
          buf.pos += 1
          break
        if sep != ",":
          raise base.InputError(path, f"expected ',' or ']' after element {index - 1} at "
                                f"character {buf.offset()}, found {sep or 'end of file'!r}")
        buf.pos += 1
      if buf.peek():
        raise base.InputError(path, f"text after the closing ']' at character {buf.offset()}")
    except UnicodeDecodeError as e:
      raise base.InputError(path, f"not UTF-8: {e}") from e
