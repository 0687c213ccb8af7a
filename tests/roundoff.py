"""Round-off bounds for comparing two computations that sum in different orders.

Shared by tests/test_train.py (sharded vs one device, accumulated vs one batch) and
tests/test_uint8_crops.py (two compiled programs of one training step). The bound is
taken from round-off itself, measured in the same test: how far the reference run
moves when its batch rows are permuted, a pure change of float32 summation order.
Parameters after Adam are compared per tensor in L2 norm (Adam turns gradient
round-off into differences of up to a learning rate where a gradient is near zero,
so no single element is a stable statistic; test_train.py's docstring has the
measurements):

  ||got - want|| <= PARAM_FACTOR * ||permuted - want|| + 2 * ||ulp||

A reordered computation may reorder several reductions where a permutation reorders
one, hence the factors.
"""
from __future__ import annotations

from typing import Dict, List

import numpy as np

PARAM_FACTOR = 8  # on per-tensor L2 norms
SCALAR_FACTOR = 4  # on loss and gradient norm


def ulp(x) -> np.ndarray:
  """float32 spacing at |x|, as float64."""
  return np.spacing(np.abs(np.asarray(x, np.float32))).astype(np.float64)


def max_diff(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> float:
  assert a.keys() == b.keys()
  return max((float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size),
             default=0.0)


def norm(x) -> float:
  return float(np.sqrt(np.sum(np.square(np.asarray(x, np.float64)))))


def violations(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray],
               permuted: Dict[str, np.ndarray], single: Dict[str, np.ndarray]) -> List[str]:
  """Tensors where ||got - want|| > PARAM_FACTOR * ||permuted - single|| + 2 ||ulp||."""
  assert got.keys() == want.keys() == permuted.keys() == single.keys(), "different params"
  assert max_diff(permuted, single) > 0, "the round-off reference is zero; it bounds nothing"
  bad = []
  for k in want:
    g, w = got[k].astype(np.float64), want[k].astype(np.float64)
    diff = norm(g - w)
    bound = (PARAM_FACTOR * norm(permuted[k].astype(np.float64) - single[k])
             + 2 * norm(ulp(np.maximum(np.abs(g), np.abs(w)))))
    if diff > bound:
      bad.append(f"{k}: |diff| {diff:.3g} > {PARAM_FACTOR} x round-off + 2 ulp = {bound:.3g}")
  return bad


def assert_close(got, want, permuted, single, what: str) -> None:
  """No tensor outside its bound (see `violations`)."""
  bad = violations(got, want, permuted, single)
  assert not bad, f"{what}: " + "; ".join(bad[:5]) + (f" and {len(bad) - 5} more"
                                                       if len(bad) > 5 else "")


def assert_scalar_close(got: float, want: float, roundoff: float, what: str) -> None:
  """|got - want| <= SCALAR_FACTOR * roundoff + 2 ulp(want)."""
  tol = SCALAR_FACTOR * roundoff + 2 * float(ulp(want))
  assert abs(got - want) <= tol, f"{what}: {got!r} vs {want!r} (tolerance {tol:.3g})"
