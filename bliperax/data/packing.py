"""Fitting samples to a row, and packing several samples per static-shape row.

A row has static sizes: T token slots, C crops, G resampler groups (and,
optionally, at most `segments` samples). Three steps get a sample there:

1. `fit` cuts a sample that does not fit an empty row. It cuts only between
   image blocks and text tokens, never inside a block (bliperax/DESIGN.md §8: the
   reference truncated before expansion and could cut `<image>` tokens), and
   drops the images past the cut. A sample left without a loss token is
   rejected (None), so no row is silently trained on nothing.
2. `Row` collects fitted samples next-fit: a sample that does not fit the
   current row starts the next one. Next-fit keeps one held sample at most,
   which makes the iterator state a plain position in the input (see
   `PackIterDataset`).
3. `Row.write` (via `CollateRows`, Grain's batch function) lays the samples
   side by side in the batch arrays: segment ids 1, 2, ... (0 is padding),
   positions restarting at 0 in each segment, each sample's crops, groups and
   vision slots offset to where the sample landed.

Preference pairs (DPO) pack the same way into two rows at once
(`pairs.PairRow`, which the packer takes as its `row_type`).

Labels are not shifted: the loss at t predicts labels[t] from position t-1.
The first token of every segment therefore gets label -100 (its predecessor
belongs to another sample, or to nothing); `fit` applies the same rule so a
sample judged to have loss tokens still has them once packed.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import grain
import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import pipeline_stats as stats_lib
from bliperax.data.batch_spec import IGNORE


@dataclasses.dataclass(frozen=True)
class Fitted:
  """A sample cut to fit a row; counts say what the cut removed."""
  ids: np.ndarray
  labels: np.ndarray
  images: tuple
  truncated_tokens: int = 0
  truncated_images: int = 0


def fit(ids: Sequence[int], labels: Sequence[int],
        images: Sequence[batch_lib.VisionInput], latents: int,
        limits: batch_spec.Limits) -> Optional[Fitted]:
  """Cuts a sample to fit an empty row, never inside an image block.

  Args:
    ids: int[n] token ids with `<image>` markers (not yet expanded).
    labels: int[n], -100 off the loss.
    images: one `VisionInput` per marker.
    latents: L, vision tokens per group.
    limits: the row's sizes.

  Returns:
    The (possibly cut) sample with label[0] = -100, or None when no loss
    token is left.

  Raises:
    ValueError: markers and images disagree.
  """
  ids = np.asarray(ids, np.int32)
  labels = np.array(labels, np.int32)
  spans = batch_lib.image_spans(ids.tolist(), images, latents)
  total = len(ids) + sum(slots - used for _, used, slots in spans)
  n = crops = groups = kept = i = 0
  while i < len(ids):
    if ids[i] == batch_lib.IMAGE_ID:
      _, used, slots = spans[kept]
      image = images[kept]
      if (n + slots > limits.length or crops + len(image.crops) > limits.crops
          or groups + image.num_groups > limits.groups):
        break
      n, crops, groups, kept, i = (n + slots, crops + len(image.crops),
                                   groups + image.num_groups, kept + 1, i + used)
    else:
      if n + 1 > limits.length:
        break
      n, i = n + 1, i + 1
  ids, labels = ids[:i], labels[:i]
  if len(labels):
    labels[0] = IGNORE
  if not np.any(labels != IGNORE):
    return None
  return Fitted(ids, labels, tuple(images[:kept]), truncated_tokens=total - n,
                truncated_images=len(images) - kept)


class Row:
  """Samples collected for one row, next-fit. `rows`: batch rows it writes."""
  rows = 1

  def __init__(self, limits: batch_spec.Limits, dims: batch_spec.VisionDims):
    self.limits = limits
    self.dims = dims
    self.examples: list[batch_lib.Example] = []
    self.length = self.crops = self.groups = 0

  def fits(self, example: batch_lib.Example) -> bool:
    lim = self.limits
    return (len(self.examples) < (lim.segments or len(self.examples) + 1)
            and self.length + len(example.tokens) <= lim.length
            and self.crops + len(example.crops) <= lim.crops
            and self.groups + len(example.group_index) <= lim.groups)

  def add(self, example: batch_lib.Example) -> None:
    if not self.fits(example):
      raise ValueError(f"a sample of {len(example.tokens)} tokens, {len(example.crops)} "
                       f"crops does not fit the row")
    self.examples.append(example)
    self.length += len(example.tokens)
    self.crops += len(example.crops)
    self.groups += len(example.group_index)

  @property
  def loss_tokens(self) -> int:
    """Targets once packed (a segment's first label is dropped, see module doc)."""
    return sum(int(np.count_nonzero(e.labels[1:] != IGNORE)) for e in self.examples)

  def write(self, out: dict[str, np.ndarray], b: int) -> None:
    """Writes the row into row b of batch arrays made by `batch_spec.padding`."""
    p, lat = self.dims.patches, self.dims.latents
    t = c = g = 0
    for segment, e in enumerate(self.examples, start=1):
      n, nc, ng = len(e.tokens), len(e.crops), len(e.group_index)
      out["tokens"][b, t:t + n] = e.tokens
      out["labels"][b, t:t + n] = e.labels
      out["labels"][b, t] = IGNORE  # predicted from another sample's last token
      out["positions"][b, t:t + n] = np.arange(n, dtype=np.int32)
      out["segment_ids"][b, t:t + n] = segment
      if nc:
        out["crops"][b, c:c + nc] = e.crops
        out["crop_valid"][b, c:c + nc] = True
      if ng:
        # A sample's group indices point into its own crops' features; here its
        # crops start at crop c of the row.
        out["group_index"][b, g:g + ng] = e.group_index + c * p
        out["group_mask"][b, g:g + ng] = e.group_mask
        out["group_valid"][b, g:g + ng] = True
        out["vision_slots"][b, g * lat:(g + ng) * lat] = e.vision_slots + t
      t, c, g = t + n, c + nc, g + ng

  def arrays(self, pad_id: int) -> dict[str, np.ndarray]:
    """The row alone (no batch axis); keys and shapes as `batch_spec.padding` without B."""
    out = batch_spec.padding(1, self.limits, self.dims, pad_id)
    self.write(out, 0)
    return {k: v[0] for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class PackedRow:
  """A row's samples and its counter vector (int64[K]), before collation."""
  row: Row
  stats: np.ndarray


class CollateRows:
  """Grain `batch_fn`: packed rows -> batch arrays, written once (no per-row copies).

  A packed item may fill several batch rows (`rows`: a pair row fills two).
  """

  def __init__(self, limits: batch_spec.Limits, dims: batch_spec.VisionDims, pad_id: int):
    self.limits, self.dims, self.pad_id = limits, dims, pad_id

  def __call__(self, rows: Sequence[PackedRow]) -> dict[str, np.ndarray]:
    out = batch_spec.padding(sum(packed.row.rows for packed in rows), self.limits,
                             self.dims, self.pad_id)
    b = 0
    for packed in rows:
      packed.row.write(out, b)
      b += packed.row.rows
    out["stats"] = np.stack([packed.stats for packed in rows])
    return out


class PackIterDataset(grain.IterDataset):
  """Packs `Prepared` items into `PackedRow`s; counts every item it consumes.

  Each row's `stats` (int64[K], in the order of `counters.names`) holds the
  events of the items consumed for it (skips, truncations, ...) and the
  row's own counters. Batch with `CollateRows`. `row_type` makes the rows:
  `Row`, or `pairs.PairRow` for preference pairs (whose items hold `pairs.Pair`s).
  """

  def __init__(self, parent: grain.IterDataset, limits: batch_spec.Limits, dims: batch_spec.VisionDims,
               counters: stats_lib.Counters, row_type=Row):
    super().__init__(parent)
    self.limits = limits
    self.dims = dims
    self.counters = counters
    self.row_type = row_type

  def __iter__(self) -> "_PackIterator":
    return _PackIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"PackIterDataset({self.limits})"


class _PackIterator(grain.DatasetIterator):
  """Next-fit packing whose state is the input position of its held sample.

  After a row is emitted at most one consumed item is pending: the sample
  that did not fit. The state is the parent's state from before that item
  was read, so a restored iterator reads it again and builds the same rows;
  the item's events are counted when it is packed, so no count is lost or
  doubled.
  """

  def __init__(self, parent: grain.DatasetIterator, ds: PackIterDataset):
    super().__init__(parent)
    self._ds = ds
    self._held: Optional[stats_lib.Prepared] = None
    self._held_state = None

  def _row_stats(self, row: Row) -> np.ndarray:
    c, vec = self._ds.counters, self._ds.counters.zeros()
    loss_tokens = row.loss_tokens
    c.add(vec, "rows", row.rows)
    c.add(vec, "rows_without_loss", int(loss_tokens == 0))
    c.add(vec, "row_tokens", row.length)
    c.add(vec, "row_capacity", row.rows * self._ds.limits.length)
    c.add(vec, "loss_tokens", loss_tokens)
    c.add(vec, "vision_tokens", row.groups * self._ds.dims.latents)
    c.add(vec, "crops", row.crops)
    c.add(vec, "crop_capacity", row.rows * self._ds.limits.crops)
    return vec

  def __next__(self) -> PackedRow:
    counters = self._ds.counters
    events = counters.zeros()
    row = self._ds.row_type(self._ds.limits, self._ds.dims)
    if self._held is not None:
      row.add(self._held.example)
      counters.count_item(events, self._held)
      self._held, self._held_state = None, None
    while True:
      state = self._parent.get_state()
      try:
        item = next(self._parent)
      except StopIteration:
        if not row.examples:
          raise
        break
      if isinstance(item, stats_lib.Skipped):
        counters.count_item(events, item)
        continue
      if row.fits(item.example):
        row.add(item.example)
        counters.count_item(events, item)
        continue
      self._held, self._held_state = item, state
      break
    return PackedRow(row, events + self._row_stats(row))

  def get_state(self) -> dict:
    if self._held is not None:
      return {"parent": self._held_state}
    return {"parent": self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._held, self._held_state = None, None
