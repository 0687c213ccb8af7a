"""The batch: its keys, dtypes and static shapes, for data, model, step, AOT and benchmarks.

Every batch that reaches the model has static shapes; everything ragged (how many
crops an image has, how its crops regroup, where its vision tokens go) was turned
into padded arrays and gather indices on the host. Sizes:

  B rows, T token slots, C crops, G resampler groups per row (the row's `Limits`),
  S crop side, P ViT patches per crop, L resampler latents per group (`VisionDims`).

Arrays (the model's keyword arguments are `MODEL_KEYS`; training adds `labels`):

  tokens        int32[B, T]   ids of the expanded sequence (vision slots hold any id)
  positions     int32[B, T]   RoPE positions (restart at 0 in each packed sample)
  segment_ids   int32[B, T]   0 = padding; 1, 2, ... one id per packed sample
  labels        int32[B, T]   target at t (predicted from t-1); IGNORE off the loss
  crops         uint8[B, C, S, S, 3]  image crops as pixels (unused crops are zeros); the
                                model normalises them to [-1, 1] on the device
                                (bliperax/data/pixels.py). The model also takes float32
                                crops already in [-1, 1] (noised images, tests).
  group_index   int32[B, G, P]  per group, indices into the row's flattened crop
                                features [C·P] (the anyres regrouping)
  group_mask    bool[B, G, P]   key mask of each group's features (True = attend)
  vision_slots  int32[B, G·L]   slot in [0, T) that each vision token fills; T (out of
                                range) drops the token, e.g. for padding groups
  crop_valid    bool[B, C]      host bookkeeping: which crops are real
  group_valid   bool[B, G]      host bookkeeping: which groups are real
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from bliperax.models.config import XGenMMConfig

IGNORE = -100  # label of a position off the loss (the PyTorch convention)

# Crops cross process boundaries and reach the device as pixels: a quarter of the bytes
# of float32, normalised inside the jitted step (bliperax/data/pixels.py).
CROPS_DTYPE = np.dtype(np.uint8)

MODEL_KEYS = ("tokens", "positions", "segment_ids", "crops", "group_index", "group_mask",
              "vision_slots")
TRAIN_KEYS = MODEL_KEYS + ("labels",)
HOST_KEYS = ("crop_valid", "group_valid")  # filled by the host, read by checks and tools
ALL_KEYS = TRAIN_KEYS + HOST_KEYS


@dataclasses.dataclass(frozen=True)
class VisionDims:
  """Per-crop sizes the model fixes: crop side S, ViT patches P, resampler latents L."""
  crop_size: int
  patches: int
  latents: int

  @classmethod
  def of(cls, cfg: XGenMMConfig) -> "VisionDims":
    return cls(cfg.vision.image_size, cfg.vision.num_patches, cfg.resampler.num_latents)


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


def shapes(rows: int, limits: Limits, dims: VisionDims
           ) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
  """{key: (shape, dtype)} of every array of a batch of `rows` rows (ALL_KEYS)."""
  b, t, c, g = rows, limits.length, limits.crops, limits.groups
  s, p, lat = dims.crop_size, dims.patches, dims.latents
  i32, b8 = np.dtype(np.int32), np.dtype(bool)
  return dict(
      tokens=((b, t), i32), positions=((b, t), i32), segment_ids=((b, t), i32),
      labels=((b, t), i32), crops=((b, c, s, s, 3), CROPS_DTYPE), group_index=((b, g, p), i32),
      group_mask=((b, g, p), b8), vision_slots=((b, g * lat), i32),
      crop_valid=((b, c), b8), group_valid=((b, g), b8))


def padding(rows: int, limits: Limits, dims: VisionDims, pad_id: int
            ) -> Dict[str, np.ndarray]:
  """A batch of nothing but padding (ALL_KEYS), ready to be written into."""
  fill = dict(tokens=pad_id, labels=IGNORE, segment_ids=0,  # segment 0: padding
              vision_slots=limits.length)  # T is out of range: the token is dropped
  return {k: np.full(shape, fill.get(k, 0), dtype)
          for k, (shape, dtype) in shapes(rows, limits, dims).items()}


def abstract(rows: int, limits: Limits, dims: VisionDims, keys: Sequence[str] = TRAIN_KEYS,
             sharding: Optional[Callable[[int], object]] = None) -> dict:
  """jax.ShapeDtypeStructs of `keys` (for lowering without data); `sharding(ndim)`."""
  import jax  # pylint: disable=g-import-not-at-top  (the host pipeline needs no jax)
  spec = shapes(rows, limits, dims)
  return {k: jax.ShapeDtypeStruct(spec[k][0], spec[k][1],
                                  sharding=None if sharding is None else sharding(
                                      len(spec[k][0])))
          for k in keys}


def model_inputs(batch: dict) -> dict:
  """The keyword arguments of `XGenMM.__call__` from a batch."""
  return {k: batch[k] for k in MODEL_KEYS}
