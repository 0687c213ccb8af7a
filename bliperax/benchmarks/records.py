"""What every benchmark reader yields, and how it reads the released JSON files.

A reader turns the official annotation files of one benchmark into a list of
`Sample`s, one per scored unit: a question (VQA benchmarks) or an image (captioning
benchmarks). The same record serves scoring (`answers` are the references) and
few-shot prompting (a train-split sample's `question` and most common answer make a
demonstration). Every problem with a file is a `BenchmarkError` whose message names
the file and, where it applies, the record and field.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional, Tuple, Union

SampleId = Union[int, str]


class BenchmarkError(ValueError):
  """A benchmark file is missing, unreadable, of another benchmark, or lacks a field."""


@dataclasses.dataclass(frozen=True)
class Sample:
  """One scored unit of a benchmark.

  id: what the official results format keys predictions by: the question id (VQAv2,
    OK-VQA, TextVQA: ints), the image file name (VizWiz), the image id (captioning:
    COCO ints, TextCaps strings).
  image: the image file, relative to the images folder of the benchmark
    (`val2014/COCO_val2014_000000391895.jpg`, `train_images/0054c91397f2fe05.jpg`).
  question: the question; None for captioning.
  answers: the human answers (VQA: usually 10, repeats kept: they are the votes) or
    the reference captions, as released (unprocessed).
  answer_type: 'yes/no', 'number', 'other' (VQAv2, OK-VQA) or also 'unanswerable'
    (VizWiz); None where the benchmark has none.
  question_type: VQAv2's question-type prefix ('what color is the') or OK-VQA's
    knowledge category ('one' ... 'ten', 'other'); None elsewhere.
  domain: NoCaps' 'in-domain' / 'near-domain' / 'out-domain'; None elsewhere.
  """
  id: SampleId
  image: str
  question: Optional[str]
  answers: Tuple[str, ...]
  answer_type: Optional[str] = None
  question_type: Optional[str] = None
  domain: Optional[str] = None


def load_json(path: pathlib.Path, what: str) -> Any:
  """The parsed file; `what` says which file of which benchmark it should be."""
  if not path.is_file():
    raise BenchmarkError(f"missing file {path} ({what})")
  try:
    with open(path, "rb") as f:
      return json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BenchmarkError(f"{path}: not a readable JSON file ({what}): {e}") from None


def field(record: Any, key: str, path: pathlib.Path, where: str,
          kind: Union[type, Tuple[type, ...], None] = None) -> Any:
  """record[key], or a BenchmarkError naming the file, the record and the field."""
  if not isinstance(record, dict):
    raise BenchmarkError(f"{path}: {where} is a {type(record).__name__}, not an object")
  if key not in record:
    raise BenchmarkError(f"{path}: {where} has no field {key!r}")
  value = record[key]
  if kind is not None and (not isinstance(value, kind) or isinstance(value, bool)):
    names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
    raise BenchmarkError(f"{path}: {where} field {key!r} is a {type(value).__name__}, "
                         f"expected {names}")
  return value


def strings(record: Any, key: str, path: pathlib.Path, where: str) -> Tuple[str, ...]:
  """A non-empty list of strings at record[key]."""
  values = field(record, key, path, where, list)
  if not values or not all(isinstance(v, str) for v in values):
    raise BenchmarkError(f"{path}: {where} field {key!r} must be a non-empty list of strings")
  return tuple(values)


def describe(record: Any, id_key: str, index: int) -> str:
  """'3 (question_id 262148000)': a record's position and id, for error messages."""
  if isinstance(record, dict) and id_key in record:
    return f"{index} ({id_key} {record[id_key]!r})"
  return str(index)
