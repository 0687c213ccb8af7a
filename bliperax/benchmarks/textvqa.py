"""TextVQA: one file per split, `TextVQA_0.5.1_val.json` (as released, v0.5.1).

{"dataset_name": "textvqa", "dataset_type": "val", "data": [{"question_id": 34602,
  "question": "what is the brand of this camera?", "image_id": "003a8ae2ef43b901",
  "answers": ["nous les gosses", "dakota", ... 10], "image_classes", "flickr_original_url",
  ...}]}
Train and val images are both in `train_images/<image_id>.jpg` (train_val_images.zip).
TextVQA has no answer types.
"""
from __future__ import annotations

import pathlib
from typing import List

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample, describe, field, load_json
from bliperax.benchmarks.records import strings


def read(path: pathlib.Path) -> List[Sample]:
  doc = load_json(path, "the TextVQA file")
  identify.expect(path, doc, "textvqa")
  samples = []
  for i, entry in enumerate(field(doc, "data", path, "the file", list)):
    where = f"entry {describe(entry, 'question_id', i)}"
    image_id = field(entry, "image_id", path, where, str)
    samples.append(Sample(
        id=field(entry, "question_id", path, where, int),
        image=f"train_images/{image_id}.jpg",
        question=field(entry, "question", path, where, str),
        answers=strings(entry, "answers", path, where)))
  if not samples:
    raise BenchmarkError(f"{path}: no questions in 'data'")
  return samples
