"""Captions in the COCO format: COCO's `captions_val2014.json` and NoCaps'
`nocaps_val_4500_captions.json`.

{"images": [{"id": 391895, "file_name": "COCO_val2014_000000391895.jpg", ...}],
 "annotations": [{"image_id": 391895, "id": 770337, "caption": "A man with ..."}]}
NoCaps images also carry "domain" ('in-domain', 'near-domain', 'out-domain') and
"open_images_id". One Sample per image, in the file's image order, its captions in
annotation order. COCO images are in `val2014/` / `train2014/` (the folder is the
file name's middle part); NoCaps images are named by their file_name alone.
"""
from __future__ import annotations

import pathlib
import re
from typing import Dict, List

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample, describe, field, load_json


def read(path: pathlib.Path, kind: str, title: str) -> List[Sample]:
  """`kind`: 'coco_captions' or 'nocaps_captions'; NoCaps images need a domain."""
  doc = load_json(path, f"the {title} captions file")
  identify.expect(path, doc, kind)
  captions: Dict[int, List[str]] = {}
  for i, a in enumerate(field(doc, "annotations", path, "the file", list)):
    where = f"annotation {describe(a, 'id', i)}"
    image_id = field(a, "image_id", path, where, int)
    captions.setdefault(image_id, []).append(field(a, "caption", path, where, str))
  samples = []
  for i, image in enumerate(field(doc, "images", path, "the file", list)):
    where = f"image {describe(image, 'id', i)}"
    image_id = field(image, "id", path, where, int)
    file_name = field(image, "file_name", path, where, str)
    if image_id not in captions:
      raise BenchmarkError(f"{path}: {where} has no captions (a test-split image-info "
                           "file has no references to score against)")
    domain = field(image, "domain", path, where, str) if kind == "nocaps_captions" else None
    folder = re.match(r"COCO_([a-z]+\d{4})_\d+\.\w+$", file_name)
    samples.append(Sample(
        id=image_id, image=f"{folder.group(1)}/{file_name}" if folder else file_name,
        question=None, answers=tuple(captions.pop(image_id)), domain=domain))
  if captions:
    raise BenchmarkError(f"{path}: captions for image id {next(iter(captions))} which is "
                         "not in 'images'")
  if not samples:
    raise BenchmarkError(f"{path}: no images")
  return samples
