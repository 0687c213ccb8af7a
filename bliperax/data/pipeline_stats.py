"""What flows between the pipeline's stages, and the counters that travel with rows.

The per-sample stage (decode, render, crops, expand; `pipeline.PrepareSample`)
emits a `Prepared` example or a `Skipped` marker, never an exception, so that a
corrupt sample is counted where it happens. The packer turns the events of the
items it consumed into a counter vector attached to each row it emits
(`"stats"`, int64[K]); batching stacks them and the main-process iterator sums
them. Counts therefore cross `mp_prefetch` with the data itself, and a
restored iterator's totals stay exact.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import render as render_lib
from bliperax.data import schema

# Why a sample was not trained on.
CORRUPT_RECORD = "corrupt_record"  # the bytes are not a record of this version
BAD_IMAGE = "bad_image"  # an image does not decode
NO_LOSS_TOKENS = "no_loss_tokens"  # nothing to learn from (e.g. the answer was cut off)
RENDER_ERROR = "render_error"  # text and images disagree after tokenization
SKIP_REASONS = (
    CORRUPT_RECORD, schema.MALFORMED_RECORD, schema.EMPTY_TEXT,
    schema.IMAGE_MARKER_MISMATCH, schema.BAD_TURN_ORDER, schema.MALFORMED_BBOX,
    schema.IDENTICAL_PAIR, BAD_IMAGE, render_lib.TOO_MANY_IMAGES,
    render_lib.UNSUPPORTED_KIND, NO_LOSS_TOKENS, RENDER_ERROR, "other")

# Counters of samples that were used, and of rows.
SAMPLE_COUNTERS = (
    "samples_read",  # every item the packer consumed, skipped or not
    "samples_packed",
    "truncated_samples",  # cut to fit the row (never inside an image block)
    "truncated_tokens",  # expanded tokens the cuts removed
    "truncated_images",  # images the cuts removed
    "capped_samples",  # documents that lost images to the per-sample cap
    "capped_images",
)
ROW_COUNTERS = (
    "rows",
    "rows_without_loss",  # rows whose every label is -100 (should stay 0)
    "row_tokens",  # non-padding tokens, vision slots included
    "row_capacity",  # rows · T
    "loss_tokens",
    "vision_tokens",
    "crops",
    "crop_capacity",  # rows · C
)


@dataclasses.dataclass(frozen=True)
class Prepared:
  """One sample ready to pack.

  Attributes:
    example: the sample with its images expanded into vision-token slots.
    source: index of the mixture source it came from.
    truncated_tokens, truncated_images: what the fit to the row cut off.
    capped_images: images dropped by the per-sample image cap.
  """
  example: batch_lib.Example
  source: int
  truncated_tokens: int = 0
  truncated_images: int = 0
  capped_images: int = 0


@dataclasses.dataclass(frozen=True)
class Skipped:
  """A sample that will not be trained on; `reason` is one of SKIP_REASONS."""
  reason: str
  source: int
  message: str = ""


class Counters:
  """Names and positions of the counters in a row's int64[K] vector."""

  def __init__(self, source_names: Sequence[str]):
    self.source_names = tuple(source_names)
    self.names = (SAMPLE_COUNTERS + ROW_COUNTERS
                  + tuple(f"skipped/{r}" for r in SKIP_REASONS)
                  + tuple(f"source/{s}" for s in self.source_names))
    self._index = {n: i for i, n in enumerate(self.names)}

  def __len__(self) -> int:
    return len(self.names)

  def zeros(self) -> np.ndarray:
    return np.zeros(len(self.names), np.int64)

  def add(self, vector: np.ndarray, name: str, value: int = 1) -> None:
    vector[self._index[name]] += value

  def count_item(self, vector: np.ndarray, item: Prepared | Skipped) -> None:
    """Adds one consumed item's events."""
    self.add(vector, "samples_read")
    if isinstance(item, Skipped):
      reason = item.reason if item.reason in SKIP_REASONS else "other"
      self.add(vector, f"skipped/{reason}")
      return
    self.add(vector, "samples_packed")
    self.add(vector, f"source/{self.source_names[item.source]}")
    if item.truncated_tokens or item.truncated_images:
      self.add(vector, "truncated_samples")
      self.add(vector, "truncated_tokens", item.truncated_tokens)
      self.add(vector, "truncated_images", item.truncated_images)
    if item.capped_images:
      self.add(vector, "capped_samples")
      self.add(vector, "capped_images", item.capped_images)

  def to_dict(self, vector: np.ndarray) -> dict[str, int]:
    return {n: int(v) for n, v in zip(self.names, vector)}

  def from_dict(self, counts: Mapping[str, int]) -> np.ndarray:
    """Inverse of `to_dict`; names this configuration lacks are an error."""
    vector = self.zeros()
    for name, value in counts.items():
      if name not in self._index:
        raise ValueError(f"iterator state counts {name!r}, which this pipeline does "
                         "not have (another source mixture?)")
      vector[self._index[name]] = int(value)
    return vector


def summary(counts: Mapping[str, int]) -> dict:
  """Totals plus the derived rates: packing efficiency, skips, truncations."""
  out = dict(counts)
  capacity = counts.get("row_capacity", 0)
  read = counts.get("samples_read", 0)
  rows = counts.get("rows", 0)
  out["packing_efficiency"] = counts.get("row_tokens", 0) / capacity if capacity else 0.0
  out["crop_efficiency"] = (counts.get("crops", 0) / counts["crop_capacity"]
                            if counts.get("crop_capacity") else 0.0)
  out["samples_per_row"] = counts.get("samples_packed", 0) / rows if rows else 0.0
  skipped = sum(v for k, v in counts.items() if k.startswith("skipped/"))
  out["skipped"] = skipped
  out["skip_rate"] = skipped / read if read else 0.0
  return out
