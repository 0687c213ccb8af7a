"""Fitting samples to a row, and packing several samples per static-shape row.

A row has static sizes: T token slots, C crops, G resampler groups (and,
optionally, at most `segments` samples). Three steps get a sample there:

1. `fit` cuts a sample that does not fit an empty row. It cuts only between
   image blocks and text tokens, never inside a block (SPEC.md §4, §7: the
   reference truncated before expansion and could cut `<image>` tokens), and
   drops the images past the cut. A sample left without a loss token is
   rejected (None), so no row is silently trained on nothing.
2. `Row` collects fitted samples next-fit: a sample that does not fit the
   current row starts the next one. Next-fit keeps one held sample at most,
   which makes the iterator state a plain position in the input (see
   `PackIterDataset`).
3. `Row.arrays` lays the samples side by side: segment ids 1, 2, ... (0 is
   padding), positions restarting at 0 in each segment, each sample's crops,
   groups and vision slots offset to where the sample landed.

Labels are not shifted: the loss at t predicts labels[t] from position t-1.
The first token of every segment therefore gets label -100 (its predecessor
belongs to another sample, or to nothing); `fit` applies the same rule so a
sample judged to have loss tokens still has them once packed.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional, Sequence

import grain
import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import pipeline_stats as stats_lib

IGNORE = batch_lib.IGNORE


@dataclasses.dataclass(frozen=True)
class Limits:
  """Static sizes of one row.

  Attributes:
    length: T, token slots (vision slots included).
    crops: C, image crops.
    groups: G, resampler groups (G·L vision slots).
    segments: most samples in a row; 1 pads instead of packing; 0: no limit.
  """
  length: int
  crops: int
  groups: int
  segments: int = 0


@dataclasses.dataclass(frozen=True)
class RowDims:
  """Per-crop shapes: crop side S, ViT patches P, resampler latents L."""
  crop_size: int
  patches: int
  latents: int


@dataclasses.dataclass(frozen=True)
class Fitted:
  """A sample cut to fit a row; counts say what the cut removed."""
  ids: np.ndarray
  labels: np.ndarray
  images: tuple
  truncated_tokens: int = 0
  truncated_images: int = 0


def _image_spans(ids: Sequence[int], images: Sequence[batch_lib.VisionInput],
                 latents: int) -> list[tuple[int, int]]:
  """(ids consumed, slots produced) of each image, as `batch.expand` decides them."""
  spans, k = [], 0
  for i, token in enumerate(ids):
    if token != batch_lib.IMAGE_ID:
      continue
    if k >= len(images):
      raise ValueError(f"more <image> tokens than the {len(images)} image(s)")
    run = 1
    while i + run < len(ids) and ids[i + run] == batch_lib.IMAGE_PLACEHOLDER_ID:
      run += 1
    num_groups = images[k].num_groups
    if run == latents and num_groups == 1:  # the base model's placeholder convention
      spans.append((run, latents))
    else:
      spans.append((1, num_groups * latents))
    k += 1
  if k != len(images):
    raise ValueError(f"{k} <image> token(s) for {len(images)} image(s)")
  return spans


def fit(ids: Sequence[int], labels: Sequence[int],
        images: Sequence[batch_lib.VisionInput], latents: int,
        limits: Limits) -> Optional[Fitted]:
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
  spans = _image_spans(ids.tolist(), images, latents)
  total = len(ids) + sum(slots - used for used, slots in spans)
  n = crops = groups = kept = i = 0
  while i < len(ids):
    if ids[i] == batch_lib.IMAGE_ID:
      used, slots = spans[kept]
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
  """Samples collected for one row, next-fit."""

  def __init__(self, limits: Limits, dims: RowDims):
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

  def arrays(self, pad_id: int) -> dict[str, np.ndarray]:
    """The row's arrays (no batch axis); keys as `batch.collate`.

    Returns:
      tokens, labels, positions, segment_ids int32[T]; crops float32[C, S, S, 3];
      crop_valid bool[C]; group_index int32[G, P]; group_mask bool[G, P];
      group_valid bool[G]; vision_slots int32[G·L] (T where unused: dropped).
    """
    t_max, c_max, g_max = self.limits.length, self.limits.crops, self.limits.groups
    s, p, lat = self.dims.crop_size, self.dims.patches, self.dims.latents
    out = dict(
        tokens=np.full(t_max, pad_id, np.int32),
        labels=np.full(t_max, IGNORE, np.int32),
        positions=np.zeros(t_max, np.int32),
        segment_ids=np.zeros(t_max, np.int32),
        crops=np.zeros((c_max, s, s, 3), np.float32),
        crop_valid=np.zeros(c_max, bool),
        group_index=np.zeros((g_max, p), np.int32),
        group_mask=np.zeros((g_max, p), bool),
        group_valid=np.zeros(g_max, bool),
        vision_slots=np.full(g_max * lat, t_max, np.int32),
    )
    t = c = g = 0
    for segment, e in enumerate(self.examples, start=1):
      n, nc, ng = len(e.tokens), len(e.crops), len(e.group_index)
      out["tokens"][t:t + n] = e.tokens
      out["labels"][t:t + n] = e.labels
      out["labels"][t] = IGNORE  # predicted from another sample's last token
      out["positions"][t:t + n] = np.arange(n, dtype=np.int32)
      out["segment_ids"][t:t + n] = segment
      if nc:
        out["crops"][c:c + nc] = e.crops
        out["crop_valid"][c:c + nc] = True
      if ng:
        # A sample's group indices point into its own crops' features; here its
        # crops start at crop c of the row.
        out["group_index"][g:g + ng] = e.group_index + c * p
        out["group_mask"][g:g + ng] = e.group_mask
        out["group_valid"][g:g + ng] = True
        out["vision_slots"][g * lat:(g + ng) * lat] = e.vision_slots + t
      t, c, g = t + n, c + nc, g + ng
    return out


class PackIterDataset(grain.IterDataset):
  """Packs `Prepared` items into row dicts; counts every item it consumes.

  Each output row carries `"stats"`: int64[K] with the events of the items
  consumed for it (skips, truncations, ...) and the row's own counters, in
  the order of `counters.names`.
  """

  def __init__(self, parent: grain.IterDataset, limits: Limits, dims: RowDims,
               pad_id: int, counters: stats_lib.Counters):
    super().__init__(parent)
    self.limits = limits
    self.dims = dims
    self.pad_id = pad_id
    self.counters = counters

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

  def _row_stats(self, row: Row, arrays: dict) -> np.ndarray:
    c, vec = self._ds.counters, self._ds.counters.zeros()
    loss_tokens = int(np.sum(arrays["labels"] != IGNORE))
    c.add(vec, "rows")
    c.add(vec, "rows_without_loss", int(loss_tokens == 0))
    c.add(vec, "row_tokens", row.length)
    c.add(vec, "row_capacity", self._ds.limits.length)
    c.add(vec, "loss_tokens", loss_tokens)
    c.add(vec, "vision_tokens", row.groups * self._ds.dims.latents)
    c.add(vec, "crops", row.crops)
    c.add(vec, "crop_capacity", self._ds.limits.crops)
    return vec

  def __next__(self) -> dict[str, np.ndarray]:
    counters = self._ds.counters
    events = counters.zeros()
    row = Row(self._ds.limits, self._ds.dims)
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
    arrays = row.arrays(self._ds.pad_id)
    arrays["stats"] = events + self._row_stats(row, arrays)
    return arrays

  def get_state(self) -> dict:
    if self._held is not None:
      return {"parent": self._held_state}
    return {"parent": self._parent.get_state()}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._held, self._held_state = None, None


def pack_examples(examples: Sequence[batch_lib.Example], limits: Limits,
                  dims: RowDims, pad_id: int) -> Iterator[dict[str, np.ndarray]]:
  """Next-fit packs already fitted examples into row dicts (tools, tests)."""
  row = Row(limits, dims)
  for e in examples:
    if not row.fits(e):
      yield row.arrays(pad_id)
      row = Row(limits, dims)
    row.add(e)
  if row.examples:
    yield row.arrays(pad_id)
