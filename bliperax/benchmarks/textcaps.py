"""TextCaps: one file per split, `TextCaps_0.1_val.json` (as released, v0.1).

{"dataset_name": "textcaps", "dataset_type": "val", "data": [{"image_id":
  "0054c91397f2fe05", "image_name": "0054c91397f2fe05", "image_path":
  "train/0054c91397f2fe05.jpg", "caption_id": 1, "caption_str": "...",
  "reference_strs": [...], ...}]}
One entry per caption: entries are grouped by image_id (first-appearance order), the
references being their caption_str (or, without it, the entry's reference_strs).
Ids are the image_id strings, as in TextCaps results files. Train and val images
are in `train_images/<image_name>.jpg` (train_val_images.zip, shared with TextVQA).
"""
from __future__ import annotations

import pathlib
from typing import Dict, List

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample, describe, field, load_json
from bliperax.benchmarks.records import strings


def read(path: pathlib.Path) -> List[Sample]:
  doc = load_json(path, "the TextCaps file")
  identify.expect(path, doc, "textcaps")
  names: Dict[str, str] = {}
  captions: Dict[str, List[str]] = {}
  for i, entry in enumerate(field(doc, "data", path, "the file", list)):
    where = f"entry {describe(entry, 'image_id', i)}"
    image_id = field(entry, "image_id", path, where, str)
    name = entry.get("image_name", image_id)
    names.setdefault(image_id, name if isinstance(name, str) else image_id)
    refs = captions.setdefault(image_id, [])
    if "caption_str" in entry:
      refs.append(field(entry, "caption_str", path, where, str))
    elif not refs:
      refs.extend(strings(entry, "reference_strs", path,
                          f"{where} (which has no 'caption_str')"))
  if not captions:
    raise BenchmarkError(f"{path}: no captions in 'data'")
  return [Sample(id=i, image=f"train_images/{names[i]}.jpg", question=None,
                 answers=tuple(refs)) for i, refs in captions.items()]
