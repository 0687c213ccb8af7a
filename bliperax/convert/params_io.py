"""bliperax parameter checkpoints: an Orbax tree of weights plus a JSON model card.

Layout of a directory written by `save_params`:
  params/         Orbax (StandardCheckpointer) tree of numpy/jax arrays
  bliperax.json   {"format": 1, "model": <XGenMMConfig dict>, "hf_config": <source config.json>}
The directory appears only when complete (written beside it, then renamed).
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Optional, Tuple

import numpy as np
import orbax.checkpoint as ocp

from bliperax.convert.safetensors_io import CheckpointError
from bliperax.models import config as config_lib
from bliperax.models.config import XGenMMConfig

CARD = "bliperax.json"
FORMAT = 1


def save_params(dst: os.PathLike, params: dict, cfg: XGenMMConfig,
                hf_config: Optional[dict] = None, overwrite: bool = False) -> pathlib.Path:
  dst = pathlib.Path(dst).absolute()
  if dst.exists() and any(dst.iterdir()) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass overwrite to replace it)")
  dst.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(tmp / "params", params)
      ckptr.wait_until_finished()
    card = {"format": FORMAT, "model": config_lib.to_dict(cfg), "hf_config": hf_config}
    (tmp / CARD).write_text(json.dumps(card, indent=1))
    if dst.exists():
      shutil.rmtree(dst)
    os.replace(tmp, dst)
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return dst


def read_card(src: os.PathLike) -> Tuple[XGenMMConfig, Optional[dict]]:
  src = pathlib.Path(src)
  card_path = src / CARD
  if not card_path.exists():
    raise CheckpointError(f"{src}: not a bliperax parameter checkpoint (no {CARD})")
  card = json.loads(card_path.read_text())
  if card.get("format") != FORMAT:
    raise CheckpointError(f"{card_path}: unsupported format {card.get('format')!r}")
  return config_lib.from_dict(card["model"]), card.get("hf_config")


def load_params(src: os.PathLike) -> Tuple[dict, XGenMMConfig, Optional[dict]]:
  """Returns (params as numpy arrays, model config, source HF config or None)."""
  src = pathlib.Path(src).absolute()
  cfg, hf_config = read_card(src)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(src / "params")
    tree = getattr(meta, "item_metadata", meta)
    target = _numpy_target(tree)
    params = ckptr.restore(src / "params", target)
  return params, cfg, hf_config


def _numpy_target(tree):
  """Restore target that asks Orbax for host numpy arrays in the stored dtype."""
  import jax
  def leaf(m):
    return np.empty(m.shape, m.dtype) if hasattr(m, "shape") else m
  return jax.tree.map(leaf, tree, is_leaf=lambda x: hasattr(x, "shape"))
