"""LLaVA-style conversations (LLaVA-1.5/NeXT mixes, MANTIS, MMDU): `Chat` samples.

A JSON array (read element by element) or JSONL of
`{"id", "image": path | "images": [paths], "conversations": [{"from", "value"}]}`.
`from` is "human"/"user", "gpt"/"assistant", or a leading "system". Image
paths are relative to the image folder. User turns must already hold one
`<image>` per image: a sample whose count differs is skipped, never patched,
since where the images go is the dataset's decision.
"""
from __future__ import annotations

from typing import Iterator

from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import images
from bliperax.data.sources import jsonio

SUFFIXES = (".json", ".jsonl")
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


def image_refs(obj: dict, root: str) -> list[images.ImageRef]:
  """The record's images from `image` (a path or a list) or `images`."""
  value = obj.get("images", obj.get("image"))
  if value is None:
    return []
  if not isinstance(value, list):
    value = [value]
  return [images.ref_from_json(v, root) for v in value]


def _turns(conversations) -> tuple[str | None, list[str]]:
  if not isinstance(conversations, list) or not conversations:
    raise base.malformed("'conversations' is not a non-empty list")
  system, turns = None, []
  for i, turn in enumerate(conversations):
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
      raise base.malformed(f"turn {i} is not {{'from': ..., 'value': str}}")
    role = _ROLES.get(str(turn.get("from")).lower())
    if role is None:
      raise base.malformed(f"turn {i} is from unknown role {turn.get('from')!r}")
    if role == "system":
      if i:
        raise schema.InvalidSample(schema.BAD_TURN_ORDER, f"system turn at position {i}")
      system = turn["value"]
      continue
    expected = "user" if len(turns) % 2 == 0 else "assistant"
    if role != expected:
      raise schema.InvalidSample(schema.BAD_TURN_ORDER,
                                 f"turn {i} is from {role}, expected {expected}")
    turns.append(turn["value"])
  return system, turns


def _draft(obj, sample_id: str, root: str) -> base.Draft:
  obj = jsonio.require_object(obj)
  system, turns = _turns(obj.get("conversations"))
  return base.Draft(sample_id, "chat", {"turns": turns, "images": image_refs(obj, root),
                                        "system": system})


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Drafts of the file's conversations, in order."""
  root = options.image_root(path)
  for position, obj in jsonio.iter_records(path):
    sample_id = jsonio.record_id(obj, position)
    yield base.skip_on_invalid(sample_id, lambda: _draft(obj, sample_id, root))
