"""Parquet tables of captions (HF datasets, KALE, img2dataset parquet output).

One row, one `Caption`: the image column holds encoded bytes, a path
(relative to the image folder), or HF's `{"bytes", "path"}` struct; the text
column holds the caption. With an empty `image_field` the rows become `Text`
samples. Rows are read in small batches, so memory is bounded by the row
group being read.
"""
from __future__ import annotations

import os
from typing import Iterator

from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import images

SUFFIXES = (".parquet",)
_BATCH_ROWS = 64


def _image_ref(value, root: str) -> images.ImageRef:
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not value:
      raise schema.InvalidSample(images.MISSING_IMAGE, "image bytes are empty")
    return images.ImageRef(data=bytes(value))
  if isinstance(value, dict) and isinstance(value.get("bytes"), (bytes, bytearray)):
    return _image_ref(value["bytes"], root)
  if isinstance(value, dict):
    value = value.get("path")
  if value is None:
    raise schema.InvalidSample(images.MISSING_IMAGE, "image is null")
  return images.ref_from_json(value, root)


def _draft(row: dict, sample_id: str, options: base.ReaderOptions,
           root: str) -> base.Draft:
  text = row[options.text_field]
  if text is None:
    raise schema.InvalidSample(schema.EMPTY_TEXT, f"{options.text_field!r} is null")
  if not isinstance(text, str):
    raise base.malformed(f"{options.text_field!r} is a {type(text).__name__}")
  if not options.image_field:
    return base.Draft(sample_id, "text", {"text": text})
  image = _image_ref(row[options.image_field], root)
  return base.Draft(sample_id, "caption", {"image": image, "text": text, "task": options.task})


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Drafts of the table's rows, in order."""
  import pyarrow  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  name = os.path.basename(path)
  root = options.image_root(path)
  try:
    table = pq.ParquetFile(path)
  except (pyarrow.ArrowException, OSError) as e:
    raise base.InputError(path, f"not a readable parquet file: {e}") from e
  columns = [c for c in (options.text_field, options.image_field, options.id_field) if c]
  if missing := [c for c in columns if c not in table.schema_arrow.names]:
    raise base.InputError(path, f"no column(s) {missing}; the file has "
                          f"{table.schema_arrow.names} (set --text_field/--image_field)")
  row_number = 0
  try:
    for batch in table.iter_batches(batch_size=_BATCH_ROWS, columns=columns):
      for row in batch.to_pylist():
        sample_id = (str(row[options.id_field]) if options.id_field
                     else f"{name}#{row_number}")
        yield base.skip_on_invalid(sample_id, lambda: _draft(row, sample_id, options, root))
        row_number += 1
  except (pyarrow.ArrowException, OSError) as e:
    raise base.InputError(path, f"unreadable after row {row_number}: {e}") from e
