"""glibc malloc settings that keep XLA's per-step CPU buffers mapped between steps.

On the CPU backend XLA allocates each execution's temporaries (hundreds of MB for a
training step) with malloc and frees them when the step ends. glibc serves blocks
that large with mmap and hands them back with munmap, or trims the heap after a big
free, so every step page-faults its whole working set in again: measured on 2 cores,
117k minor faults and 585 ms per pre-training step of the digits model, against 14
faults and 322 ms with the blocks kept (tools/bench_train_step.py).

`keep_freed_memory()` sets, for this process, one malloc arena, no mmap for large
blocks and no trimming, with `mallopt`: the same as starting the process with
MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>, but from inside,
so every entry point gets it (bliperax.cli calls it) and a library user can call it
first thing. The cost: memory freed by the process stays with it, as the peak.
Set BLIPERAX_SYSTEM_MALLOC=1 to keep glibc's defaults; any MALLOC_* setting of the
user's in the environment wins too (then this does nothing). Elsewhere than glibc
(macOS, musl) it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
OPT_OUT = "BLIPERAX_SYSTEM_MALLOC"


def keep_freed_memory() -> bool:
  """Applies the settings above; returns whether they are in force.

  Call before the big allocations start (ideally before jax starts its threads:
  arenas that already exist stay).
  """
  if os.environ.get(OPT_OUT, "") not in ("", "0"):
    return False
  if any(k.startswith("MALLOC_") for k in os.environ):  # the user tuned malloc: theirs
    return False
  name = ctypes.util.find_library("c")
  try:
    libc = ctypes.CDLL(name or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  # -1 as the threshold is SIZE_MAX once glibc reads it as a size: never trim.
  settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1))
  return all(mallopt(param, value) == 1 for param, value in settings)
