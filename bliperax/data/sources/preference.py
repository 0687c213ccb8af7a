"""Preference pairs (VLFeedback, RLAIF-V style): `Preference` samples for DPO.

JSONL (or a JSON array) of `{"id"?, "prompt", "image": path | "images": [...],
"chosen", "rejected", "system"?}`; image entries as in `llava.py`. Preference
datasets rarely mark images in the prompt, so a prompt with no `<image>` gets
one `<image>\\n` per image in front (the SFT layout, bliperax/DESIGN.md §5); a prompt
with some markers must have exactly one per image.
"""
from __future__ import annotations

from typing import Iterator

from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import jsonio
from bliperax.data.sources import llava

SUFFIXES = (".jsonl", ".json")


def _text(obj: dict, key: str, optional: bool = False) -> str | None:
  value = obj.get(key)
  if value is None and optional:
    return None
  if value is None:
    raise schema.InvalidSample(schema.EMPTY_TEXT, f"no {key!r}")
  if not isinstance(value, str):
    raise base.malformed(f"{key!r} is a {type(value).__name__}")
  return value


def _draft(obj, sample_id: str, root: str) -> base.Draft:
  obj = jsonio.require_object(obj)
  prompt = _text(obj, "prompt")
  refs = llava.image_refs(obj, root)
  if refs and schema.IMAGE_MARKER not in prompt:
    prompt = f"{schema.IMAGE_MARKER}\n" * len(refs) + prompt
  return base.Draft(sample_id, "preference", {
      "prompt": prompt, "chosen": _text(obj, "chosen"), "rejected": _text(obj, "rejected"),
      "images": refs, "system": _text(obj, "system", optional=True)})


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Drafts of the file's pairs, in order."""
  root = options.image_root(path)
  for position, obj in jsonio.iter_records(path):
    sample_id = jsonio.record_id(obj, position)
    yield base.skip_on_invalid(sample_id, lambda: _draft(obj, sample_id, root))
