"""Fitting samples to a row, and packing several samples per static-shape row.

A row has static sizes: T token slots, C crops, G resampler groups (and,
optionally, at most `segments` samples). Three steps get a sample there:

1. `fit` cuts a sample that does not fit an empty row. It cuts only between
   image blocks and text tokens, never inside a block (bliperax/DESIGN.md §8: the
   reference truncated before expansion and could cut `<image>` tokens), and
   drops the images past the cut. A sample left without a loss token is
   rejected (None), so no row is silently trained on nothing.
2. `Row` collects fitted samples, next-fit (the default) or best-fit
   (`packer="best_fit"`). Next-fit: a sample that does not fit the current row
   starts the next one; it keeps one held sample at most, which makes the
   iterator state a plain position in the input. Best-fit keeps a bounded set of
   open rows and puts each sample into the fullest one it fits: fuller rows
   (less padding) for a few more samples in flight (`_BestFitIterator`).
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
  def full(self) -> bool:
    """No sample fits any more: every token slot used, or the segment cap reached."""
    lim = self.limits
    return self.length >= lim.length or 0 < lim.segments <= len(self.examples)

  @property
  def crop_arrays(self) -> list[np.ndarray]:
    """Each sample's crops (uint8 pixels from the pipeline; float32 in tests)."""
    return [e.crops for e in self.examples]

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
        out["crops"][b, c:c + nc] = batch_lib.as_crops(e.crops, out["crops"].dtype)
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
    batch_lib.set_crops_dtype(out, self.crop_arrays)
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
    batch_lib.set_crops_dtype(out, [c for packed in rows for c in packed.row.crop_arrays])
    b = 0
    for packed in rows:
      packed.row.write(out, b)
      b += packed.row.rows
    out["stats"] = np.stack([packed.stats for packed in rows])
    return out


PACKERS = ("next_fit", "best_fit")
DEFAULT_OPEN_ROWS = 8  # best-fit's bound on rows in flight (`_BestFitIterator`)


class PackIterDataset(grain.IterDataset):
  """Packs `Prepared` items into `PackedRow`s; counts every item it consumes.

  Each row's `stats` (int64[K], in the order of `counters.names`) holds the
  events of the items consumed for it (skips, truncations, ...) and the
  row's own counters. Batch with `CollateRows`. `row_type` makes the rows:
  `Row`, or `pairs.PairRow` for preference pairs (whose items hold `pairs.Pair`s).
  `packer`: "next_fit" (`_PackIterator`) or "best_fit" (`_BestFitIterator`, with at
  most `open_rows` rows open).
  """

  def __init__(self, parent: grain.IterDataset, limits: batch_spec.Limits, dims: batch_spec.VisionDims,
               counters: stats_lib.Counters, row_type=Row, packer: str = "next_fit",
               open_rows: int = DEFAULT_OPEN_ROWS):
    super().__init__(parent)
    if packer not in PACKERS:
      raise ValueError(f"unknown packer {packer!r} (known: {', '.join(PACKERS)})")
    if open_rows < 1:
      raise ValueError(f"best-fit packing needs at least 1 open row, got {open_rows}")
    self.limits = limits
    self.dims = dims
    self.counters = counters
    self.row_type = row_type
    self.packer = packer
    self.open_rows = open_rows

  def __iter__(self) -> grain.DatasetIterator:
    if self.packer == "best_fit":
      return _BestFitIterator(self._parent.__iter__(), self)
    return _PackIterator(self._parent.__iter__(), self)

  def __str__(self) -> str:
    return f"PackIterDataset({self.limits}, {self.packer})"


def _row_stats(ds: PackIterDataset, row: Row) -> np.ndarray:
  """The row's own counters (int64[K]): rows, tokens and capacity, loss tokens, crops."""
  c, vec = ds.counters, ds.counters.zeros()
  loss_tokens = row.loss_tokens
  c.add(vec, "rows", row.rows)
  c.add(vec, "rows_without_loss", int(loss_tokens == 0))
  c.add(vec, "row_tokens", row.length)
  c.add(vec, "row_capacity", row.rows * ds.limits.length)
  c.add(vec, "loss_tokens", loss_tokens)
  c.add(vec, "vision_tokens", row.groups * ds.dims.latents)
  c.add(vec, "crops", row.crops)
  c.add(vec, "crop_capacity", row.rows * ds.limits.crops)
  return vec


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
    return PackedRow(row, events + _row_stats(self._ds, row))

  def get_state(self) -> dict:
    if self._held is not None:
      return {"parent": self._held_state}
    return {"parent": self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._held, self._held_state = None, None


class _OpenRow:
  """A best-fit row still taking samples: the row, its items and the parent's state
  from before each item was read (what restores it)."""

  def __init__(self, row: Row):
    self.row = row
    self.items: list[stats_lib.Prepared] = []
    self.states: list = []

  def add(self, item: stats_lib.Prepared, state) -> None:
    self.row.add(item.example)
    self.items.append(item)
    self.states.append(state)


class _BestFitIterator(grain.DatasetIterator):
  """Streaming best-fit packing over at most `open_rows` open rows.

  Offline best-fit sees every sample before placing any; a stream cannot, so this is
  its bounded form. Rows are kept oldest first. Each sample goes to the open row it
  fits (tokens, crops, groups, segments) that holds the most tokens, the oldest of
  equals; when it fits none, it opens a new row. A row is emitted as soon as it is
  full (`Row.full`); when a new row would make more than `open_rows` open, the oldest
  is emitted first. So every sample leaves within `open_rows` row openings of being
  read (bounded reordering, nothing waits forever). At the end of a finite input the
  open rows are emitted oldest first.

  Counting: an item's events count in the row it lands in; skipped items' events
  wait in `pending` and count in the next emitted row, so totals equal next-fit's
  bookkeeping (every item counted once).

  State: the parent's state, each open row's items as the parent's states from before
  they were read, and the pending counts. `set_state` re-reads those items (the
  parent is random access, so the same items come back, prepared the same way),
  rebuilding the same open rows, then continues from the saved position: the exact
  next rows, as for next-fit.
  """

  def __init__(self, parent: grain.DatasetIterator, ds: PackIterDataset):
    super().__init__(parent)
    self._ds = ds
    self._open: list[_OpenRow] = []
    self._pending = ds.counters.zeros()
    self._exhausted = False

  def _emit(self, index: int) -> PackedRow:
    """Closes open row `index` with its items' and the pending events."""
    open_row = self._open.pop(index)
    events, self._pending = self._pending, self._ds.counters.zeros()
    for item in open_row.items:
      self._ds.counters.count_item(events, item)
    return PackedRow(open_row.row, events + _row_stats(self._ds, open_row.row))

  def _best(self, example) -> Optional[int]:
    """Index of the fullest open row that `example` fits (the oldest of equals), or None."""
    best = None
    for i, open_row in enumerate(self._open):
      if open_row.row.fits(example) and (
          best is None or open_row.row.length > self._open[best].row.length):
        best = i
    return best

  def __next__(self) -> PackedRow:
    while not self._exhausted:
      state = self._parent.get_state()
      try:
        item = next(self._parent)
      except StopIteration:
        self._exhausted = True
        break
      if isinstance(item, stats_lib.Skipped):
        self._ds.counters.count_item(self._pending, item)
        continue
      i = self._best(item.example)
      if i is None:
        self._open.append(_OpenRow(self._ds.row_type(self._ds.limits, self._ds.dims)))
        i = len(self._open) - 1
      self._open[i].add(item, state)
      if self._open[i].row.full:
        return self._emit(i)
      if len(self._open) > self._ds.open_rows:
        return self._emit(0)
    if not self._open:
      raise StopIteration
    return self._emit(0)

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(),
            "open_rows": [list(r.states) for r in self._open],
            "pending": [int(x) for x in self._pending]}

  def set_state(self, state: dict) -> None:
    self._open, self._exhausted = [], False
    for states in state["open_rows"]:
      open_row = _OpenRow(self._ds.row_type(self._ds.limits, self._ds.dims))
      for item_state in states:
        self._parent.set_state(item_state)
        item = next(self._parent)
        if not isinstance(item, stats_lib.Prepared):
          raise ValueError("best-fit packer state does not match its input: a saved open "
                           f"row's item came back as {type(item).__name__}")
        open_row.add(item, item_state)
      self._open.append(open_row)
    self._pending = np.asarray(state["pending"], np.int64)
    self._parent.set_state(state["parent"])
