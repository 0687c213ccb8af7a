"""COCO captions in Karpathy's split: `dataset_coco.json`.

{"dataset": "coco", "images": [{"filepath": "val2014", "filename":
  "COCO_val2014_000000391895.jpg", "cocoid": 391895, "imgid": 0, "split": "test",
  "sentences": [{"raw": "A man with a red helmet ...", "tokens": [...], ...}, ...],
  "sentids": [...]}, ...]}
The split field says 'train', 'restval', 'val' or 'test' (5,000 images). The
benchmark scores the test split; its train split, for few-shot demonstrations, is
'train' + 'restval' (as OpenFlamingo's evaluation). References are the raw
sentences, ids the COCO image ids (what COCO results files key by).
"""
from __future__ import annotations

import pathlib
from typing import Collection, List

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample, describe, field, load_json


def read(path: pathlib.Path, splits: Collection[str]) -> List[Sample]:
  doc = load_json(path, "the Karpathy split file dataset_coco.json")
  identify.expect(path, doc, "karpathy_coco")
  samples = []
  for i, image in enumerate(field(doc, "images", path, "the file", list)):
    where = f"image {describe(image, 'cocoid', i)}"
    if field(image, "split", path, where, str) not in splits:
      continue
    sentences = field(image, "sentences", path, where, list)
    if not sentences:
      raise BenchmarkError(f"{path}: {where} has no sentences")
    samples.append(Sample(
        id=field(image, "cocoid", path, where, int),
        image=f"{field(image, 'filepath', path, where, str)}/"
              f"{field(image, 'filename', path, where, str)}",
        question=None,
        answers=tuple(field(s, "raw", path, f"{where} sentence {j}", str)
                      for j, s in enumerate(sentences))))
  if not samples:
    raise BenchmarkError(f"{path}: no image in split {' or '.join(sorted(splits))}")
  return samples
