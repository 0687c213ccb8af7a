"""Predictions files in the official results formats, matched to a benchmark's samples.

VQA: `[{"question_id": 262148000, "answer": "yes"}, ...]` (VizWiz: `"image":
"VizWiz_val_00000000.jpg"` in place of the question id, as its own results format;
`"question_id"` holding the image name works too). Captioning: `[{"image_id": 391895,
"caption": "a man riding a bike"}, ...]`. Other keys are ignored. Ids match by
value, an id written as a string ("262148000") matching the number.

Every sample needs exactly one prediction and every prediction a sample, unless
`partial` is set, which scores the predicted samples only (as the official tools do
when given a subset of ids).
"""
from __future__ import annotations

import json
import pathlib
from typing import Dict, List, Sequence, Tuple, Union

from bliperax.benchmarks import identify
from bliperax.benchmarks.records import BenchmarkError, Sample
from bliperax.benchmarks.registry import Benchmark

_SHOWN = 5  # ids named in an error


def _ids(values: Sequence) -> str:
  shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in values[:_SHOWN])
  return shown + (", ..." if len(values) > _SHOWN else "")


def load(path: Union[str, pathlib.Path], benchmark: Benchmark) -> Dict[str, Tuple[object, str]]:
  """{str(id): (id as written, predicted text)} of a predictions file."""
  path = pathlib.Path(path)
  try:
    with open(path, "rb") as f:
      doc = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise BenchmarkError(f"cannot read the predictions {path}: {e}") from None
  keys = " or ".join(repr(k) for k in benchmark.id_keys)
  expected = (f'a list of {{"{benchmark.id_keys[0]}", "{benchmark.text_key}"}} objects, '
              f"the official results format of {benchmark.title}")
  kind = identify.identify(doc)
  if kind is not None and kind != f"{benchmark.task}_predictions":
    what = identify.KINDS[kind][0]
    raise BenchmarkError(f"{path} is {what}, not a predictions file" if not kind.endswith(
        "_predictions") else f"{path} is {what}; expected {expected}")
  if not isinstance(doc, list):
    raise BenchmarkError(f"{path}: expected {expected}; found a {type(doc).__name__}")
  out: Dict[str, Tuple[object, str]] = {}
  for i, entry in enumerate(doc):
    if not isinstance(entry, dict):
      raise BenchmarkError(f"{path}: entry {i} is a {type(entry).__name__}; expected {expected}")
    id_key = next((k for k in benchmark.id_keys if k in entry), None)
    if id_key is None:
      raise BenchmarkError(f"{path}: entry {i} has no {keys} (expected {expected})")
    sample_id = entry[id_key]
    if not isinstance(sample_id, (int, str)) or isinstance(sample_id, bool):
      raise BenchmarkError(f"{path}: entry {i}: {id_key} {sample_id!r} is not a number "
                           "or a string")
    text = entry.get(benchmark.text_key)
    if not isinstance(text, str):
      what = "has no" if text is None else f"has a {type(text).__name__} as its"
      raise BenchmarkError(f"{path}: entry {i} ({id_key} {sample_id!r}) {what} "
                           f"{benchmark.text_key!r} string")
    key = str(sample_id)
    if key in out:
      raise BenchmarkError(f"{path}: more than one prediction for {id_key} {sample_id!r} "
                           f"(entries {list(out).index(key)} and {i})")
    out[key] = (sample_id, text)
  return out


def records(benchmark: Benchmark, samples: Sequence[Sample], texts: Sequence[str]
            ) -> List[Dict[str, object]]:
  """The official results format of `texts` (one per sample): what `load` reads."""
  if len(samples) != len(texts):
    raise ValueError(f"{len(texts)} texts for {len(samples)} samples")
  return [{benchmark.id_keys[0]: s.id, benchmark.text_key: t}
          for s, t in zip(samples, texts)]


def align(samples: Sequence[Sample], predictions: Dict[str, Tuple[object, str]],
          benchmark: Benchmark, path: Union[str, pathlib.Path], partial: bool = False
          ) -> Tuple[List[Sample], List[str]]:
  """The samples to score (all, or with `partial` the predicted ones) and their texts."""
  by_key = {str(s.id): s for s in samples}
  unit = "questions" if benchmark.task == "vqa" else "images"
  unknown = [sample_id for key, (sample_id, _) in predictions.items() if key not in by_key]
  if unknown:
    files = ", ".join(benchmark.files["eval"])
    raise BenchmarkError(
        f"{path}: {len(unknown)} prediction(s) for {benchmark.id_keys[0]}s that are not in "
        f"{benchmark.title} ({files}): {_ids(unknown)}")
  missing = [s.id for s in samples if str(s.id) not in predictions]
  if missing and not partial:
    raise BenchmarkError(
        f"{path}: no prediction for {len(missing):,} of the {len(samples):,} {benchmark.title} "
        f"{unit} ({benchmark.id_keys[0]} {_ids(missing)}); --partial scores the predicted "
        "ones only")
  kept = [s for s in samples if str(s.id) in predictions]
  if not kept:
    raise BenchmarkError(f"{path}: no predictions")
  return kept, [predictions[str(s.id)][1] for s in kept]
