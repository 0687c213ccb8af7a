"""VizWiz VQA: one file per split, `val.json` / `train.json` (the 2020+ release).

[{"image": "VizWiz_val_00000000.jpg", "question": "Ok. There is another picture ...",
  "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}, ... 10],
  "answer_type": "unanswerable", "answerable": 0}, ...]
There are no question ids: a question is named by its image file, which is also the
key of VizWiz's own results format ([{"image", "answer"}]). Images are in `val/` and
`train/` (val.zip, train.zip).
"""
from __future__ import annotations

import pathlib
from typing import List

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample, describe, field, load_json


def read(path: pathlib.Path, folder: str) -> List[Sample]:
  """`folder`: where this split's images are, relative to the images folder."""
  doc = load_json(path, "the VizWiz annotations file")
  identify.expect(path, doc, "vizwiz")
  if not isinstance(doc, list):
    raise BenchmarkError(f"{path}: expected a list of questions, found a "
                         f"{type(doc).__name__}")
  samples = []
  for i, entry in enumerate(doc):
    where = f"entry {describe(entry, 'image', i)}"
    image = field(entry, "image", path, where, str)
    answers = field(entry, "answers", path, where, list)
    if not answers:
      raise BenchmarkError(f"{path}: {where} has no answers (a test-split file?)")
    samples.append(Sample(
        id=image, image=f"{folder}/{image}",
        question=field(entry, "question", path, where, str),
        answers=tuple(field(a, "answer", path, f"{where} answer {j}", str)
                      for j, a in enumerate(answers)),
        answer_type=field(entry, "answer_type", path, where, str)))
  if not samples:
    raise BenchmarkError(f"{path}: no questions")
  return samples
