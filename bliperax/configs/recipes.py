"""The paper's training recipes as configs, for any model preset (sized for TPU slices)."""
from __future__ import annotations

from typing import Optional

import ml_collections

from bliperax.configs.base import base, parse_arg


def pretrain(preset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """The pre-training recipe (bliperax/DESIGN.md §9) for a model preset, sized for a TPU slice.

  Global batch 512 x 2048 tokens with 4 single-crop images per sequence, bf16 compute
  with float32 master weights, scanned layers with full remat, FSDP over the slice.
  Knobs: batch, seq, images, remat.
  """
  k = parse_arg(arg)
  c = base(preset)
  c.total_steps = 50_000
  c.log_every = 50
  c.checkpoint_every = 1000
  c.model.numerics.update(dtype="bfloat16", param_dtype="float32", scan_layers=True,
                          remat_policy=k.get("remat", "full"))
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.optim.update(lr=1e-4, warmup_steps=2000, weight_decay=0.05, final_lr_ratio=0.0)
  c.train.update(global_batch=int(k.get("batch", 512)), seq_len=int(k.get("seq", 2048)),
                 accum_steps=1, images_per_row=int(k.get("images", 4)))
  return c
