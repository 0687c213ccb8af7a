"""From token ids and images to the model's static-shape batch (host side, numpy).

Each `<image>` token of a sample becomes the block of vision-token slots that its
image's groups fill (G_img · L slots: the global image, then the anyres groups);
labels are -100 over the block. `collate` pads samples to one static shape and
computes positions, segment ids, crops, regrouping indices and slot indices; see
`bliperax.models.xgenmm` for the batch layout.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image

from bliperax.data import image as image_lib
from bliperax.models.config import XGenMMConfig

IGNORE = -100
IMAGE_ID = 32012
IMAGE_PLACEHOLDER_ID = 32013


@dataclasses.dataclass(frozen=True)
class VisionInput:
  """One image: its crops and how their ViT features group for the resampler.

  Attributes:
    crops: float32[n, S, S, 3] in [-1, 1].
    group_index: int32[g, P] indices into this image's flattened crop features [n·P].
    group_mask: bool[g, P] key mask of each group (True = attend).
  """
  crops: np.ndarray
  group_index: np.ndarray
  group_mask: np.ndarray

  @property
  def num_groups(self) -> int:
    return int(self.group_index.shape[0])


def prepare_image(image: Image.Image, cfg: XGenMMConfig, anyres: bool = True) -> VisionInput:
  """Anyres crops + regrouping (SFT / instruct) or the single squashed crop (pre-training)."""
  base, patch = cfg.vision.image_size, cfg.vision.patch_size
  if anyres:
    a = image_lib.anyres_crops(image, base, cfg.anyres_grids)
    index, valid = image_lib.regroup(a.image_size, a.grid, base, patch)
    return VisionInput(a.crops, index, valid)
  index, valid = image_lib.single_group(cfg.vision.num_patches, 1)
  return VisionInput(image_lib.base_crop(image, base), index, valid)


@dataclasses.dataclass(frozen=True)
class Example:
  """One sample with its images expanded into vision-token slots.

  Attributes:
    tokens: int32[T]; labels: int32[T] (-100 off the loss).
    crops: float32[C, S, S, 3]; group_index int32[G, P] into the sample's crop
      features [C·P]; group_mask bool[G, P].
    vision_slots: int32[G·L] the slot of each vision token in `tokens`.
  """
  tokens: np.ndarray
  labels: np.ndarray
  crops: np.ndarray
  group_index: np.ndarray
  group_mask: np.ndarray
  vision_slots: np.ndarray


def expand(ids: Sequence[int], labels: Optional[Sequence[int]], images: Sequence[VisionInput],
           num_latents: int, crop_size: int) -> Example:
  """Replaces each `<image>` with its slot block, images in the order of their tokens.

  Both prompt conventions work: a lone `<image>` (instruct models; the block is
  inserted) and `<image>` followed by L-1 `<image placeholder>` (the base model's demo;
  the L existing tokens become the slots of a single-group image).
  """
  ids = [int(t) for t in ids]
  labels = list(ids) if labels is None else [int(x) for x in labels]
  n_markers = ids.count(IMAGE_ID)
  if n_markers != len(images):
    raise ValueError(f"the text has {n_markers} <image> token(s) but {len(images)} image(s) "
                     "were given")
  tokens: List[int] = []
  out_labels: List[int] = []
  slots: List[int] = []
  k = 0
  i = 0
  while i < len(ids):
    tok = ids[i]
    if tok != IMAGE_ID:
      tokens.append(tok)
      out_labels.append(labels[i])
      i += 1
      continue
    img = images[k]
    k += 1
    n = img.num_groups * num_latents
    run = 1
    while i + run < len(ids) and ids[i + run] == IMAGE_PLACEHOLDER_ID:
      run += 1
    if run == num_latents and img.num_groups == 1:  # base-model convention: slots exist
      block = ids[i:i + run]
      i += run
    else:
      block = [IMAGE_ID] * n
      i += 1
    slots.extend(range(len(tokens), len(tokens) + n))
    tokens.extend(block)
    out_labels.extend([IGNORE] * n)
  if images:
    crops = np.concatenate([im.crops for im in images]).astype(np.float32)
    p = images[0].group_index.shape[1]
    offsets = np.cumsum([0] + [im.crops.shape[0] for im in images[:-1]]) * p
    index = np.concatenate([im.group_index + off for im, off in zip(images, offsets)])
    mask = np.concatenate([im.group_mask for im in images])
  else:
    crops = np.zeros((0, crop_size, crop_size, 3), np.float32)
    index = np.zeros((0, 0), np.int32)
    mask = np.zeros((0, 0), bool)
  return Example(np.asarray(tokens, np.int32), np.asarray(out_labels, np.int32), crops,
                 index.astype(np.int32), mask.astype(bool), np.asarray(slots, np.int32))


def padding_batch(b: int, t: int, c: int, g: int, crop_size: int, patches: int,
                  latents: int, pad_id: int) -> dict:
  """Batch arrays holding nothing but padding (the static shapes of `collate`).

  tokens, labels, positions, segment_ids int32[B, T]; crops float32[B, C, S, S, 3];
  crop_valid bool[B, C]; group_index int32[B, G, P]; group_mask bool[B, G, P];
  group_valid bool[B, G]; vision_slots int32[B, G·L] (T where unused: dropped).
  """
  return dict(
      tokens=np.full((b, t), pad_id, np.int32),
      labels=np.full((b, t), IGNORE, np.int32),
      positions=np.zeros((b, t), np.int32),
      segment_ids=np.zeros((b, t), np.int32),
      crops=np.zeros((b, c, crop_size, crop_size, 3), np.float32),
      crop_valid=np.zeros((b, c), bool),
      group_index=np.zeros((b, g, patches), np.int32),
      group_mask=np.zeros((b, g, patches), bool),
      group_valid=np.zeros((b, g), bool),
      vision_slots=np.full((b, g * latents), t, np.int32),  # T = out of range: dropped
  )


def collate(examples: Sequence[Example], cfg: XGenMMConfig, pad_id: int,
            side: str = "right", length: Optional[int] = None,
            num_crops: Optional[int] = None, num_groups: Optional[int] = None) -> dict:
  """Pads examples into one batch of static shapes (numpy).

  Args:
    side: 'right' (training; positions 0..n-1) or 'left' (generation prompts;
      positions cumsum(mask) - 1, as the reference's `generate`).
    length, num_crops, num_groups: static sizes T, C, G (default: the largest needed).
  Returns:
    dict with tokens, positions, segment_ids, labels [B, T]; crops [B, C, S, S, 3];
    crop_valid [B, C]; group_index, group_mask [B, G, P]; group_valid [B, G];
    vision_slots [B, G·L].
  """
  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")
  s, p, lat = cfg.vision.image_size, cfg.vision.num_patches, cfg.resampler.num_latents
  b = len(examples)
  t = length or max(len(e.tokens) for e in examples)
  c = num_crops if num_crops is not None else max(1, max(len(e.crops) for e in examples))
  g = num_groups if num_groups is not None else max(1, max(len(e.group_index) for e in examples))
  batch = padding_batch(b, t, c, g, s, p, lat, pad_id)
  for row, e in enumerate(examples):
    n = len(e.tokens)
    if n > t or len(e.crops) > c or len(e.group_index) > g:
      raise ValueError(f"example {row} needs length {n}, {len(e.crops)} crops, "
                       f"{len(e.group_index)} groups; the batch allows {t}, {c}, {g}")
    start = t - n if side == "left" else 0
    batch["tokens"][row, start:start + n] = e.tokens
    batch["labels"][row, start:start + n] = e.labels
    batch["segment_ids"][row, start:start + n] = 1
    batch["crops"][row, :len(e.crops)] = e.crops
    batch["crop_valid"][row, :len(e.crops)] = True
    batch["group_index"][row, :len(e.group_index)] = e.group_index
    batch["group_mask"][row, :len(e.group_index)] = e.group_mask
    batch["group_valid"][row, :len(e.group_index)] = True
    batch["vision_slots"][row, :len(e.vision_slots)] = e.vision_slots + start
  valid = batch["segment_ids"] > 0
  if side == "left":
    batch["positions"] = np.maximum(np.cumsum(valid, axis=1) - 1, 0).astype(np.int32)
  else:
    batch["positions"] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
  return batch


MODEL_KEYS = ("tokens", "positions", "segment_ids", "crops", "group_index", "group_mask",
              "vision_slots")


def model_inputs(batch: dict) -> dict:
  """The keyword arguments of `XGenMM.__call__` from a collated batch."""
  return {k: batch[k] for k in MODEL_KEYS}
