"""Interleaved documents (MINT-1T, OBELICS): `Interleaved` samples.

JSONL (or a JSON array) of `{"id"?, "texts": [...], "images": [...]}`: two
lists of equal length where position i holds a text (images[i] null) or an
image (texts[i] null); a position with both null is ignored. An image entry
is a path (relative to the image folder), a base64 `data:` URI or
`{"bytes": base64}`, or a URL, which is not fetched (see `images.py`).
"""
from __future__ import annotations

from typing import Iterator

from bliperax.data.sources import base
from bliperax.data.sources import images
from bliperax.data.sources import jsonio

SUFFIXES = (".jsonl", ".json")


def _draft(obj, sample_id: str, root: str) -> base.Draft:
  obj = jsonio.require_object(obj)
  texts, refs = obj.get("texts"), obj.get("images")
  if not isinstance(texts, list) or not isinstance(refs, list):
    raise base.malformed("'texts' and 'images' must both be lists")
  if len(texts) != len(refs):
    raise base.malformed(f"{len(texts)} texts but {len(refs)} images; the lists must align")
  items = []
  for i, (text, ref) in enumerate(zip(texts, refs)):
    if text is not None and ref is not None:
      raise base.malformed(f"position {i} holds both a text and an image")
    if ref is not None:
      items.append(images.ref_from_json(ref, root))
    elif text is not None:
      if not isinstance(text, str):
        raise base.malformed(f"texts[{i}] is a {type(text).__name__}")
      items.append(text)
  return base.Draft(sample_id, "interleaved", {"items": items})


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Drafts of the file's documents, in order."""
  root = options.image_root(path)
  for position, obj in jsonio.iter_records(path):
    sample_id = jsonio.record_id(obj, position)
    yield base.skip_on_invalid(sample_id, lambda: _draft(obj, sample_id, root))
