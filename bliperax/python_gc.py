"""Python garbage-collector thresholds for a process that traces JAX programs.

Tracing a Flax model (`jax.eval_shape`, `jit(...).lower`) allocates millions of
short-lived Python objects, and CPython's default thresholds (700, 10, 10) run a
collection every 700 net allocations, each of which walks the young objects, and a
full collection over everything JAX, Flax and the traced program keep alive every
100 of those. Measured on 2 cores with the `small` preset (phase timers around
tools/bench_process.py's steps, 3 runs each): `TrainSetup.build` 1.7 -> 1.1-1.5 s,
the init's lowering 1.4-1.65 -> 0.8-1.0 s, the train step's lowering 2.0-2.6 ->
1.7-1.9 s. The cost: cyclic garbage lives up to `YOUNG` allocations longer (some MB).

`collect_less_often()` sets these thresholds for this process; bliperax.cli calls it
at import, so every entry point gets it, and a library user can call it first thing.
`BLIPERAX_PYTHON_GC=default` keeps CPython's thresholds; a program that already
changed them (or disabled the collector) keeps its own.
"""
from __future__ import annotations

import gc
import os

# Net allocations between young collections (default 700); young collections
# between middle ones (default 10); middle ones between full ones (default 10).
YOUNG, MIDDLE, FULL = 100_000, 20, 100
CPYTHON_DEFAULT = (700, 10, 10)
OPT_OUT = "BLIPERAX_PYTHON_GC"


def collect_less_often() -> bool:
  """Raises the collector's thresholds to (YOUNG, MIDDLE, FULL); returns whether they
  are in force. Leaves thresholds a program set itself, a disabled collector and
  `BLIPERAX_PYTHON_GC=default` alone."""
  if os.environ.get(OPT_OUT, "") == "default":
    return False
  if not gc.isenabled() or gc.get_threshold() not in (CPYTHON_DEFAULT, (YOUNG, MIDDLE, FULL)):
    return False
  gc.set_threshold(YOUNG, MIDDLE, FULL)
  return True
