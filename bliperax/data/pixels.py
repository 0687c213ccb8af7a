"""Crop pixels (uint8) -> the model's input range [-1, 1]: one table, used on host and device.

Crops travel from the data workers to the device as uint8 pixels, a quarter of the
bytes of float32, and are normalised on the device inside the jitted step
(`XGenMM.encode_images`). The values must be bit for bit those of the reference's
host preprocessing, torchvision's `ToTensor` then `Normalize(mean=0.5, std=0.5)` in
float32: x / 255, then (x − 0.5) / 0.5.

Why a table and not that arithmetic on the device: XLA's algebraic simplifier
rewrites a division by a constant into a multiplication by its rounded reciprocal,
x · (1/255), and the CPU backend then fuses the − 0.5 into a fused multiply-add; with
jax 0.10 on CPU 205 of the 256 values come out different in their last bits (an
absolute error of ~6e-8, but not the reference's floats), and XLA promises no
correctly rounded division on other backends either. A uint8 has only 256
values, so the exact results are computed once here in numpy (IEEE float32, the
reference's order of operations) and both the host and the device *look them up*: a
gather copies bits, so every backend gives the same floats as the reference.
"""
from __future__ import annotations

import numpy as np

# torchvision Normalize's mean and std for SigLIP (the same for all three channels).
MEAN = np.float32(0.5)
STD = np.float32(0.5)


def _reference_arithmetic(pixels: np.ndarray) -> np.ndarray:
  """uint8[...] -> float32[...]: ToTensor then Normalize, float32 ops in torchvision's order."""
  x = pixels.astype(np.float32) / np.float32(255)
  return (x - MEAN) / STD


# float32[256]: the normalised value of every pixel value.
TABLE = _reference_arithmetic(np.arange(256, dtype=np.uint8))
TABLE.setflags(write=False)


def normalize(pixels):
  """uint8[...] pixels -> float32[...] in [-1, 1], bit-exact to the reference's host ops.

  Accepts a numpy array (host: golden checks, noised crops) or a jax array (inside a
  jitted function: the device side of the training and inference steps); the result is
  of the same kind.

  Raises:
    TypeError: `pixels` is not uint8 (float crops are already normalised).
  """
  if pixels.dtype != np.uint8:
    raise TypeError(f"normalize takes uint8 pixels, got {pixels.dtype} crops "
                    "(float crops are already in the model's range)")
  if isinstance(pixels, np.ndarray):
    return TABLE[pixels]
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top  (host workers need no jax)
  # Every uint8 index is in bounds, so no clamping or fill is needed.
  return jnp.asarray(TABLE).at[pixels.astype(jnp.int32)].get(mode="promise_in_bounds")
