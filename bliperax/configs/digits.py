"""The digits experiment's stages (experiments/digits/): the main job's small end-to-end run."""
from __future__ import annotations

from typing import Dict, Optional

import ml_collections

from bliperax.configs import mixtures
from bliperax.configs.base import base, parse_arg


def digits_root(arg: Optional[str]) -> str:
  """The `root=DIR` knob: the folder tools/make_digits.py --output wrote (required)."""
  root = parse_arg(arg).get("root")
  if not root:
    raise ValueError("the digits configs need root=DIR, the folder that "
                     "tools/make_digits.py --output wrote (e.g. "
                     "experiments/digits/sft.py:root=/tmp/digits)")
  return root


def digits_stage(arg: Optional[str], *, steps: int, seq_len: int, loss_tokens_per_row: int,
                 freeze: tuple, data_seed: int, max_crops: int,
                 sources: Dict[str, tuple]) -> ml_collections.ConfigDict:
  """One stage of the digits run (experiments/digits/) on the `digits` preset.

  What the two stages share: a short CPU run that checkpoints once at its end,
  AdamW at lr 3e-3, and a packed Grain pipeline over tools/make_digits.py's
  shards. `sources` maps a shard folder under ROOT/train to (weight, anyres).
  Knobs (`file.py:k=v,...`): root=DIR (tools/make_digits.py --output; required), steps=N,
  batch=B, workers=N (Grain worker processes; 0 = threads of the training
  process). The default, one worker process, measured faster on 2 cores than
  preparing batches in the training process, whose XLA threads it competes
  with (fine-tuning 0.29 -> 0.25 s/step, pre-training 0.375 -> 0.355 s/step;
  the same batches either way).
  """
  k = parse_arg(arg)
  root = digits_root(arg)
  c = base("digits")
  c.total_steps = int(k.get("steps", steps))
  c.log_every = 25
  c.checkpoint_every = c.total_steps
  c.keep_checkpoints = 1
  c.optim.update(lr=3e-3, warmup_steps=20, final_lr_ratio=0.05, b2=0.98, weight_decay=0.01,
                 freeze=tuple(freeze))
  c.train.update(global_batch=int(k.get("batch", 16)), seq_len=seq_len,
                 loss_tokens_per_row=loss_tokens_per_row)
  c.data = ml_collections.ConfigDict(dict(
      kind="grain", seed=data_seed, shuffle=True, num_epochs=0, pack=True, max_segments=0,
      max_crops=max_crops, max_groups=0, max_images=4, worker_count=int(k.get("workers", 1)),
      worker_buffer_size=2, thread_prefetch=2, read_threads=1, read_buffer_size=32,
      tokenizer="", reference_compatible=False, **mixtures.PACKING))
  c.data.sources = ml_collections.ConfigDict({
      name: dict(paths=f"{root}/train/{name}", weight=weight, anyres=anyres)
      for name, (weight, anyres) in sources.items()})
  return c
