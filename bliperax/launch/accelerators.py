"""Accelerator names: the ones the launcher accepts, and what xpk calls them.

TPUs are named as Cloud TPU names them, `GEN-N`: N counts TensorCores on v4 and v5p
(two per chip) and chips on v5e and v6e (one TensorCore each). xpk calls v5e
`v5litepod`; the other generations keep their names. The sizes are the slice shapes
xpk knows (its `core/system_characteristics.py`). v5p has a hundred of them, all
8, 16, 32, 64 or multiples of 128 TensorCores: that rule is checked here and xpk checks
the exact shape, so a new shape needs no change here.

GPUs are named as xpk's `--device-type` names them (`h100-80gb-8`: model, memory, GPUs
per node).
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

from bliperax.launch.errors import LaunchError

# Sizes per generation (None: the v5p rule). Accepted spellings of a generation on the
# left; xpk's prefix for it in XPK_PREFIX.
TPU_SIZES = {
    "v4": (8, 16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 4096),
    "v5e": (8, 16, 32, 64, 128, 256),
    "v5p": None,
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
}
ALIASES = {"v5litepod": "v5e"}
XPK_PREFIX = {"v4": "v4", "v5e": "v5litepod", "v5p": "v5p", "v6e": "v6e"}
TPU_FORMS = ("v4-N (N TensorCores: 8, 16, ..., 4096), v5e-N or v5litepod-N (N chips: 8, 16, "
             "..., 256), v5p-N (N TensorCores: 8, 16, 32, 64 or a multiple of 128), "
             "v6e-N (N chips: 1, 4, 8, ..., 256)")

GPU_TYPES = ("l4-1", "l4-2", "l4-4", "l4-8", "a100-40gb-1", "a100-40gb-2", "a100-40gb-4",
             "a100-40gb-8", "h100-80gb-8", "h100-mega-80gb-8", "h200-141gb-8", "b200-8",
             "gb200-4")

_TPU_NAME = re.compile(r"([a-z0-9]+)-([0-9]+)")


def parse_tpu(name: str) -> Tuple[str, int]:
  """`v5e-256` -> ("v5e", 256); LaunchError listing the accepted forms otherwise."""
  match = _TPU_NAME.fullmatch(name.strip().lower())
  generation = ALIASES.get(match.group(1), match.group(1)) if match else None
  size = int(match.group(2)) if match else 0
  if generation not in TPU_SIZES or not _size_ok(generation, size):
    raise LaunchError(f"unknown TPU {name!r}; accepted forms: {TPU_FORMS}")
  return generation, size


def _size_ok(generation: str, size: int) -> bool:
  """Whether xpk has a slice of `size` for `generation`."""
  sizes: Optional[tuple] = TPU_SIZES[generation]
  if sizes is None:  # v5p: 2x2x1, 2x2x2, 2x2x4, 2x4x4, then sides that are multiples of 4
    return size in (8, 16, 32, 64) or (size > 0 and size % 128 == 0)
  return size in sizes


def xpk_tpu_type(name: str) -> str:
  """The `--tpu-type` xpk wants for a TPU name: `v5e-256` -> `v5litepod-256`."""
  generation, size = parse_tpu(name)
  return f"{XPK_PREFIX[generation]}-{size}"


def check_gpu(name: str) -> str:
  """`name` if xpk knows it as a GPU `--device-type`; LaunchError listing them otherwise."""
  if name not in GPU_TYPES:
    raise LaunchError(f"unknown GPU {name!r}; accepted: {', '.join(GPU_TYPES)}")
  return name
