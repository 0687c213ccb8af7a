"""Flat parameter dicts ('/'-joined paths) and the scanned <-> unscanned layer layouts.

Unscanned layers live at `.../layers_{i}/...`; `nn.scan` keeps them at `.../layers/...`
with a leading layer axis. Conversion maps work on the unscanned form.
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

import flax
import numpy as np

_UNSCANNED = re.compile(r"^(.*?/)?layers_(\d+)/(.*)$")
_SCANNED = re.compile(r"^(.*?/)?layers/(.*)$")


def flatten(tree: Mapping) -> Dict[str, object]:
  """Nested params -> {'a/b/c': leaf}, unboxing logical-partitioning metadata."""
  tree = flax.linen.meta.unbox(tree)
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree), sep="/")


def unflatten(flat: Mapping[str, object]) -> dict:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def split_layer_path(path: str) -> Optional[Tuple[str, int]]:
  """`x/layers_{i}/y` -> (`x/layers/y`, i); None for a path outside any layer stack."""
  m = _UNSCANNED.match(path)
  if m is None:
    return None
  return f"{m.group(1) or ''}layers/{m.group(3)}", int(m.group(2))


def stacked_shapes(shapes: Mapping[str, Tuple[int, ...]]) -> Dict[str, Tuple[int, ...]]:
  """Unscanned path -> shape map to its scanned form (leading layer axis added)."""
  out: Dict[str, Tuple[int, ...]] = {}
  depth: Dict[str, int] = {}
  for path, shape in shapes.items():
    split = split_layer_path(path)
    if split is None:
      out[path] = tuple(shape)
    else:
      key, i = split
      depth[key] = max(depth.get(key, 0), i + 1)
      out[key] = tuple(shape)
  for key, n in depth.items():
    out[key] = (n,) + out[key]
  return out


def stack_layers(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """`x/layers_{i}/y` -> `x/layers/y` stacked along a new leading axis (i ascending)."""
  out: Dict[str, np.ndarray] = {}
  groups: Dict[str, Dict[int, np.ndarray]] = {}
  for path, value in flat.items():
    split = split_layer_path(path)
    if split is None:
      out[path] = value
    else:
      key, i = split
      groups.setdefault(key, {})[i] = value
  for key, by_index in groups.items():
    if sorted(by_index) != list(range(len(by_index))):
      raise ValueError(f"layers of {key} are not numbered 0..n-1: {sorted(by_index)}")
    out[key] = np.stack([np.asarray(by_index[i]) for i in range(len(by_index))])
  return out


def unstack_layers(flat: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Inverse of `stack_layers`."""
  out: Dict[str, np.ndarray] = {}
  for path, value in flat.items():
    m = _SCANNED.match(path)
    if m is None:
      out[path] = value
      continue
    value = np.asarray(value)
    for i in range(value.shape[0]):
      out[f"{m.group(1) or ''}layers_{i}/{m.group(2)}"] = value[i]
  return out


def is_scanned(flat: Mapping[str, object]) -> bool:
  return any(_SCANNED.match(p) for p in flat)
