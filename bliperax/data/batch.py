"""From token ids and images to the model's static-shape batch (host side, numpy).

Each `<image>` token of a sample becomes the block of vision-token slots that its
image's groups fill (G_img · L slots: the global image, then the anyres groups);
labels are -100 over the block. `collate` pads samples to one static shape and
computes positions, segment ids, crops, regrouping indices and slot indices; the
batch layout is `bliperax.data.batch_spec`'s.
"""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from bliperax.data import batch_spec
from bliperax.data import image as image_lib
from bliperax.data import pixels
from bliperax.data.batch_spec import IGNORE
from bliperax.models.config import XGenMMConfig

IMAGE_ID = 32012
IMAGE_PLACEHOLDER_ID = 32013


@dataclasses.dataclass(frozen=True)
class VisionInput:
  """One image: its crops and how their ViT features group for the resampler.

  Attributes:
    crops: uint8[n, S, S, 3] pixels (`batch_spec.CROPS_DTYPE`), or float32 already in
      [-1, 1] (noised images, tests; see `crops_dtype`).
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
    crops: uint8[C, S, S, 3] (or float32, see `crops_dtype`); group_index int32[G, P]
      into the sample's crop features [C·P]; group_mask bool[G, P].
    vision_slots: int32[G·L] the slot of each vision token in `tokens`.
  """
  tokens: np.ndarray
  labels: np.ndarray
  crops: np.ndarray
  group_index: np.ndarray
  group_mask: np.ndarray
  vision_slots: np.ndarray


def crops_dtype(crops: Sequence[np.ndarray]) -> np.dtype:
  """The dtype crops of these arrays share once put together in one sample or batch.

  uint8 (`batch_spec.CROPS_DTYPE`, the training layout) when all of them are pixels;
  float32 when any holds model-range values (e.g. noised images), the pixel ones then
  normalised on the host by `pixels.normalize`, the device's own table, so the model
  sees the same floats either way.

  Raises:
    ValueError: crops that are neither uint8 pixels nor floats.
  """
  for c in crops:
    if c.dtype != batch_spec.CROPS_DTYPE and not np.issubdtype(c.dtype, np.floating):
      raise ValueError(f"crops must be uint8 pixels or floats in [-1, 1], got {c.dtype}")
  if all(c.dtype == batch_spec.CROPS_DTYPE for c in crops):
    return batch_spec.CROPS_DTYPE
  return np.dtype(np.float32)


def as_crops(crops: np.ndarray, dtype: np.dtype) -> np.ndarray:
  """`crops` in `dtype` (from `crops_dtype`): pixels normalised when dtype is float32.

  Raises:
    ValueError: float crops asked for as pixels (that cast would be silent garbage).
  """
  if crops.dtype == dtype:
    return crops
  if dtype == np.float32:
    if crops.dtype == batch_spec.CROPS_DTYPE:
      return pixels.normalize(crops)
    return crops.astype(np.float32)
  raise ValueError(f"{crops.dtype} crops cannot be written into a batch of {dtype} pixel "
                   "crops")


def set_crops_dtype(batch: dict, crops: Sequence[np.ndarray]) -> None:
  """Gives `batch["crops"]` (as made by `batch_spec.padding`) the dtype that `crops`, the
  arrays about to be written into it, share (`crops_dtype`); float32 padding is the
  normalised zero pixel, as the model sees padding either way."""
  batch["crops"] = as_crops(batch["crops"], crops_dtype(crops))


def image_spans(ids: Sequence[int], images: Sequence[VisionInput],
                latents: int) -> List[Tuple[int, int, int]]:
  """Where each image's slot block goes: (index in ids, ids it replaces, slots it fills).

  Both prompt conventions work: a lone `<image>` (instruct models) is replaced by a
  block of G·L slots; `<image>` followed by L-1 `<image placeholder>` (the base
  model's demo) already is the block of a single-group image, so its L ids become
  the slots. Images pair with `<image>` tokens in order.

  Raises:
    ValueError: the number of `<image>` tokens differs from the number of images.
  """
  ids = [int(t) for t in ids]
  n_markers = ids.count(IMAGE_ID)
  if n_markers != len(images):
    raise ValueError(f"the text has {n_markers} <image> token(s) but {len(images)} image(s) "
                     "were given")
  spans = []
  for i, token in enumerate(ids):
    if token != IMAGE_ID:
      continue
    image = images[len(spans)]
    run = 1
    while i + run < len(ids) and ids[i + run] == IMAGE_PLACEHOLDER_ID:
      run += 1
    if run == latents and image.num_groups == 1:  # base-model convention: slots exist
      spans.append((i, run, latents))
    else:
      spans.append((i, 1, image.num_groups * latents))
  return spans


def expand(ids: Sequence[int], labels: Optional[Sequence[int]], images: Sequence[VisionInput],
           dims: batch_spec.VisionDims) -> Example:
  """Replaces each `<image>` with its slot block (`image_spans`), labels IGNORE there.

  A text-only sample (no `<image>`, no images) has no crops and no groups.
  """
  ids = [int(t) for t in ids]
  labels = list(ids) if labels is None else [int(x) for x in labels]
  tokens: List[int] = []
  out_labels: List[int] = []
  slots: List[int] = []
  done = 0  # ids consumed so far
  for start, used, n in image_spans(ids, images, dims.latents):
    tokens.extend(ids[done:start])
    out_labels.extend(labels[done:start])
    slots.extend(range(len(tokens), len(tokens) + n))
    tokens.extend(ids[start:start + used] if used == n else [IMAGE_ID] * n)
    out_labels.extend([IGNORE] * n)
    done = start + used
  tokens.extend(ids[done:])
  out_labels.extend(labels[done:])
  if images:
    dtype = crops_dtype([im.crops for im in images])
    crops = np.concatenate([as_crops(im.crops, dtype) for im in images])
    offsets = np.cumsum([0] + [im.crops.shape[0] for im in images[:-1]]) * dims.patches
    index = np.concatenate([im.group_index + off for im, off in zip(images, offsets)])
    mask = np.concatenate([im.group_mask for im in images])
  else:
    # Empty, but with the per-crop and per-group shapes of any other sample, so
    # that collate and packing treat it like an image sample with none.
    crops = np.zeros((0, dims.crop_size, dims.crop_size, 3), batch_spec.CROPS_DTYPE)
    index = np.zeros((0, dims.patches), np.int32)
    mask = np.zeros((0, dims.patches), bool)
  return Example(np.asarray(tokens, np.int32), np.asarray(out_labels, np.int32), crops,
                 index.astype(np.int32), mask.astype(bool), np.asarray(slots, np.int32))


def collate(examples: Sequence[Example], cfg: XGenMMConfig, pad_id: int,
            side: str = "right", length: Optional[int] = None,
            num_crops: Optional[int] = None, num_groups: Optional[int] = None) -> dict:
  """Pads examples into one batch of static shapes (numpy).

  Args:
    side: 'right' (training; positions 0..n-1) or 'left' (generation prompts;
      positions cumsum(mask) - 1, as the reference's `generate`).
    length, num_crops, num_groups: static sizes T, C, G (default: the largest needed).
  Returns:
    numpy arrays of every key of `batch_spec.ALL_KEYS`; crops uint8 when every example's
    are pixels, else float32 (`crops_dtype`).
  """
  if side not in ("left", "right"):
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")
  b = len(examples)
  t = length or max(len(e.tokens) for e in examples)
  c = num_crops if num_crops is not None else max(1, max(len(e.crops) for e in examples))
  g = num_groups if num_groups is not None else max(1, max(len(e.group_index) for e in examples))
  batch = batch_spec.padding(b, batch_spec.Limits(t, c, g), batch_spec.VisionDims.of(cfg),
                             pad_id)
  set_crops_dtype(batch, [e.crops for e in examples])
  for row, e in enumerate(examples):
    n = len(e.tokens)
    if n > t or len(e.crops) > c or len(e.group_index) > g:
      raise ValueError(f"example {row} needs length {n}, {len(e.crops)} crops, "
                       f"{len(e.group_index)} groups; the batch allows {t}, {c}, {g}")
    start = t - n if side == "left" else 0
    batch["tokens"][row, start:start + n] = e.tokens
    batch["labels"][row, start:start + n] = e.labels
    batch["segment_ids"][row, start:start + n] = 1
    batch["crops"][row, :len(e.crops)] = as_crops(e.crops, batch["crops"].dtype)
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


def bucket(n: int, smallest: int = 16) -> int:
  """The static size that n pads to: `smallest` (a power of two or 1.5 times one), then
  2^k and 1.5 * 2^k in turn.

  24, 32, 48, 64, 96, ...: at most a third of a bucket is padding, and prompts of
  any length compile O(log T) shapes rather than one per length.
  """
  size = smallest
  while size < n:
    if size & (size - 1):  # 1.5 * 2^k -> 2^(k+1)
      size = size // 3 * 4
    else:  # 2^k -> 1.5 * 2^k (1 -> 2)
      size = max(size + size // 2, 2)
  return size


def collate_prompts(examples: Sequence[Example], cfg: XGenMMConfig, pad_id: int,
                    rows: Optional[int] = None) -> dict:
  """Left-padded generation prompts in bucketed static shapes (`bucket`).

  Length, crops and groups are each rounded up to their bucket; with `rows` the batch
  is filled up to that many rows with copies of the last example (callers drop their
  outputs), so every batch of a run has the same row count. Equal tokens out to
  `collate(..., side="left")`'s for the real rows: padding is masked.
  """
  if not examples:
    raise ValueError("no prompts to collate")
  rows = rows or len(examples)
  if rows < len(examples):
    raise ValueError(f"{len(examples)} prompts do not fit in {rows} rows")
  filled = list(examples) + [examples[-1]] * (rows - len(examples))
  return collate(filled, cfg, pad_id, side="left",
                 length=bucket(max(len(e.tokens) for e in examples)),
                 num_crops=bucket(max(len(e.crops) for e in examples), smallest=1),
                 num_groups=bucket(max(len(e.group_index) for e in examples), smallest=1))
