"""VLGuard safety data (Zong et al. 2024, ys-zong/VLGuard): one `Chat` per instruction.

The released `train.json` is a JSON array with one entry per image:

  {"id": "Ads_423222", "image": "bad_ads/c7ea....png", "safe": true,
   "instr-resp": [{"safe_instruction": "What ...?", "response": "The ..."},
                  {"unsafe_instruction": "Who is ...?", "response": "I'm sorry, ..."}]}
  {"id": "Ads_364812", "image": "bad_ads/b02f....png", "safe": false,
   "harmful_category": "...", "harmful_subcategory": "...",
   "instr-resp": [{"instruction": "Share this ...", "response": "I'm sorry, ..."}]}

A safe image carries a safe instruction (answered) and an unsafe one (refused); an
unsafe image carries one instruction (refused). Each instruction-response pair
becomes a single-turn chat `["<image>\\n" + instruction, response]` with the entry's
image, id `<entry id>/<instruction key>` (e.g. `Ads_423222/unsafe_instruction`).
The dataset's own LLaVA converter instead puts a safe image's two pairs in one
two-turn chat, in random order; one chat per pair keeps every refusal a first
turn and needs no random choice.

Image paths are relative to the image folder (--images: the folder `train.zip`
unpacks to). A missing image file is a skip that names the entry, e.g.
`train.json[17] (id Ads_364812): no image file bad_ads/x.png`; an entry whose
instruction keys do not match its `safe` flag is a malformed_record skip.
"""
from __future__ import annotations

import os
from typing import Iterator

from bliperax.data import schema
from bliperax.data.sources import base
from bliperax.data.sources import images
from bliperax.data.sources import jsonio

SUFFIXES = (".json", ".jsonl")
# The instruction keys a pair may hold, by the image's `safe` flag.
_KEYS = {True: ("safe_instruction", "unsafe_instruction"), False: ("instruction",)}
_ALL_KEYS = ("safe_instruction", "unsafe_instruction", "instruction")


def _pair(pair, index: int, safe: bool) -> tuple[str, str, str]:
  """(instruction key, instruction, response) of one `instr-resp` element."""
  if not isinstance(pair, dict):
    raise base.malformed(f"instr-resp[{index}] is a {type(pair).__name__}, not an object")
  keys = [k for k in _ALL_KEYS if k in pair]
  if len(keys) != 1:
    raise base.malformed(f"instr-resp[{index}] has instruction key(s) {keys}; expected one "
                         f"of {list(_ALL_KEYS)}")
  key = keys[0]
  if key not in _KEYS[safe]:
    raise base.malformed(f"instr-resp[{index}] has {key!r} but the image is marked "
                         f"safe={str(safe).lower()} (expected {' or '.join(_KEYS[safe])})")
  instruction, response = pair[key], pair.get("response")
  for name, value in ((key, instruction), ("response", response)):
    if not isinstance(value, str):
      raise base.malformed(f"instr-resp[{index}].{name} is "
                           f"{'missing' if value is None else type(value).__name__}")
  return key, instruction, response


def _drafts(obj, where: str, root: str) -> list[base.Item]:
  """The entry's chats; `where` names the entry in messages (file, index, id)."""
  obj = jsonio.require_object(obj)
  safe = obj.get("safe")
  if not isinstance(safe, bool):
    raise base.malformed(f"'safe' is {safe!r}, not true or false")
  pairs = obj.get("instr-resp")
  if not isinstance(pairs, list) or not pairs:
    raise base.malformed("'instr-resp' is not a non-empty list")
  parsed = [_pair(p, i, safe) for i, p in enumerate(pairs)]
  relative = obj.get("image")
  ref = images.ref_from_json(relative, root)
  entry_id = jsonio.record_id(obj, where)
  ids = [f"{entry_id}/{key}" for key, _, _ in parsed]
  if ref.path is not None and not os.path.isfile(ref.path):
    # Checked here, not left to the image loader, so the message names the entry
    # and the path as train.json writes it.
    message = f"{where} (id {entry_id}): no image file {relative}"
    return [base.Skipped(i, images.MISSING_IMAGE_FILE, message) for i in ids]
  return [base.Draft(i, "chat", {"turns": [f"{schema.IMAGE_MARKER}\n{instruction}", response],
                                 "images": [ref], "system": None})
          for i, (_, instruction, response) in zip(ids, parsed)]


def read(path: str, options: base.ReaderOptions) -> Iterator[base.Item]:
  """Chats of the file's entries, in order (a safe image's two pairs in file order)."""
  root = options.image_root(path)
  for position, obj in jsonio.iter_records(path):
    try:
      yield from _drafts(obj, position, root)
    except schema.InvalidSample as e:
      entry_id = jsonio.record_id(obj, position)
      yield base.Skipped(entry_id, e.reason, f"{position} (id {entry_id}): {e.message}")
