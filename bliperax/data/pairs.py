"""Preference pairs in a batch: the layout DPO trains on (bliperax/train/dpo_step.py).

Layout: **a pair is two adjacent rows**. Row 2i holds chosen sequences, row 2i+1 the
rejected sequences of the same pairs, segment k of both rows being one pair. Each
sequence is the chat [system, prompt with its images, answer] (`render.render_pair`),
labels on the answer and its `<|end|>` only. Both rows hold the same images in the
same crops and groups (crop offsets, `group_index`, `group_mask` equal); only the
vision slots may differ, since a longer chosen answer moves the later pairs of its
row. The DPO step encodes the images of the even row once and writes the vision
tokens into both rows' slots, so the vision tower and the resampler run once per pair.

Why two rows rather than [prompt, chosen, rejected] in one row: the model's attention
masks are segment ids plus causality (`layers.attention_mask`); one shared prompt
would need a tree mask (the rejected answer must not see the chosen one) and
positions restarting after the prompt, a change to every attention layer. Two rows
are ordinary training rows (the keys, shapes and shardings of `batch_spec`, the AOT
compile's abstract batch, the same collation and checkpointed iterator), and cost
only the prompt's text tokens twice: the images, the larger part of a prompt (128 to
640 vision tokens per image), are encoded once. The odd row keeps its own copy of the
crops, which the DPO step does not read, so that either row is a valid model input
on its own (inspection tools; tests that compare with an ordinary forward): host to
device bytes, no device compute.

Packing: `PairRow` packs pairs next-fit into two `packing.Row`s in lockstep. A pair
goes in when its chosen sequence fits the chosen row and its rejected sequence the
rejected row, so a pair is never split and segment k is the same pair in both rows.
The packer holds at most one pair, so the iterator state stays a position in the
input and a restore continues with exactly the next batch (packing.PackIterDataset).
The global batch must be even; Grain batches B/2 pair rows into B rows.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from bliperax.data import batch as batch_lib
from bliperax.data import batch_spec
from bliperax.data import packing
from bliperax.data import render as render_lib


@dataclasses.dataclass(frozen=True)
class Pair:
  """A preference pair with its images expanded: two examples of the same images."""
  chosen: batch_lib.Example
  rejected: batch_lib.Example


@dataclasses.dataclass(frozen=True)
class FittedPair:
  """Both sequences of a pair cut to fit a row, sharing the kept images."""
  chosen: packing.Fitted
  rejected: packing.Fitted

  @property
  def truncated_tokens(self) -> int:
    return self.chosen.truncated_tokens + self.rejected.truncated_tokens

  @property
  def truncated_images(self) -> int:
    return self.chosen.truncated_images


def fit(chosen: render_lib.Rendered, rejected: render_lib.Rendered,
        images: Sequence[batch_lib.VisionInput], latents: int,
        limits: batch_spec.Limits) -> Optional[FittedPair]:
  """`packing.fit` for both sequences; None when either is left without an answer token.

  The images sit in the shared prompt, before the answers, so both cuts keep the
  same images (checked).

  Raises:
    ValueError: markers and images disagree, or the cuts kept different images.
  """
  a = packing.fit(chosen.ids, chosen.labels, images, latents, limits)
  b = packing.fit(rejected.ids, rejected.labels, images, latents, limits)
  if a is None or b is None:
    return None
  if len(a.images) != len(b.images):
    raise ValueError(f"the chosen sequence keeps {len(a.images)} images, the rejected "
                     f"{len(b.images)}: images must lie in the shared prompt")
  return FittedPair(a, b)


def expand(fitted: FittedPair, dims: batch_spec.VisionDims) -> Pair:
  """`batch.expand` of both sequences."""
  return Pair(*(batch_lib.expand(f.ids, f.labels, f.images, dims)
                for f in (fitted.chosen, fitted.rejected)))


class PairRow:
  """Two rows filled in lockstep with whole pairs (`packing.Row`'s interface).

  `rows` = 2: the batch rows it writes (2b: chosen, 2b + 1: rejected).
  """
  rows = 2

  def __init__(self, limits: batch_spec.Limits, dims: batch_spec.VisionDims):
    self.chosen = packing.Row(limits, dims)
    self.rejected = packing.Row(limits, dims)

  @property
  def examples(self) -> list[Pair]:
    return [Pair(c, r) for c, r in zip(self.chosen.examples, self.rejected.examples)]

  def fits(self, pair: Pair) -> bool:
    return self.chosen.fits(pair.chosen) and self.rejected.fits(pair.rejected)

  def add(self, pair: Pair) -> None:
    if not self.fits(pair):
      raise ValueError("the pair does not fit the rows")
    self.chosen.add(pair.chosen)
    self.rejected.add(pair.rejected)

  @property
  def length(self) -> int:
    return self.chosen.length + self.rejected.length

  @property
  def crops(self) -> int:
    return self.chosen.crops + self.rejected.crops

  @property
  def groups(self) -> int:
    return self.chosen.groups + self.rejected.groups

  @property
  def full(self) -> bool:
    """No pair fits any more: either row is full."""
    return self.chosen.full or self.rejected.full

  @property
  def crop_arrays(self) -> list[np.ndarray]:
    return self.chosen.crop_arrays + self.rejected.crop_arrays

  @property
  def loss_tokens(self) -> int:
    return self.chosen.loss_tokens + self.rejected.loss_tokens

  def write(self, out: dict[str, np.ndarray], b: int) -> None:
    """Writes the chosen row into row b and the rejected row into row b + 1."""
    self.chosen.write(out, b)
    self.rejected.write(out, b + 1)


def pair_rows(batch: dict[str, np.ndarray]) -> Tuple[dict, dict]:
  """A pair batch's chosen rows and rejected rows (host arrays [B/2, ...] each)."""
  return ({k: v[0::2] for k, v in batch.items()}, {k: v[1::2] for k, v in batch.items()})
