"""The base training config every experiment starts from (ml_collections).

Experiments (`experiments/**.py`) call `base(preset)` and override fields; `parse_arg`
reads the `file.py:k=v,k2=v2` knobs that config_flags passes as `get_config(arg)`.
Every config has top-level total_steps, log_every and checkpoint_every.
"""
from __future__ import annotations

from typing import Dict, Optional

import ml_collections


def parse_arg(arg: Optional[str]) -> Dict[str, str]:
  """'scan=1,accum=2' -> {'scan': '1', 'accum': '2'}."""
  out = {}
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"config knob {item!r} is not of the form key=value")
    out[key.strip()] = value.strip()
  return out


def base(preset: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.log_every = 10
  c.checkpoint_every = 500
  c.keep_checkpoints = 3

  c.model = ml_collections.ConfigDict()
  c.model.preset = preset
  c.model.init_from = ""  # a converted parameter checkpoint (tools/convert_checkpoint.py)
  c.model.numerics = ml_collections.ConfigDict(dict(
      dtype="float32", param_dtype="float32", scan_layers=False, remat_policy="none"))

  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
  c.rules = ()  # () = bliperax.sharding.DEFAULT_RULES; else ((logical, mesh axes), ...)

  # bliperax/DESIGN.md §9: AdamW, clip 1.0, cosine with linear warmup; the ViT stays frozen.
  c.optim = ml_collections.ConfigDict(dict(
      lr=1e-4, warmup_steps=100, final_lr_ratio=0.0, b1=0.9, b2=0.999, eps=1e-8,
      weight_decay=0.0, grad_clip=1.0, freeze=("^vision/",)))

  c.train = ml_collections.ConfigDict(dict(
      global_batch=8, seq_len=256, accum_steps=1, images_per_row=1,
      # > 0: run the head only at the first K loss positions of each row (train/step.py).
      loss_tokens_per_row=0))
  c.data = ml_collections.ConfigDict(dict(kind="synthetic", seed=0))
  c.distributed = ml_collections.ConfigDict(dict(coordinator="", num_processes=1,
                                                 process_id=0))
  return c


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


DIGITS_ROOT = "/tmp/digits"  # tools/make_digits.py --output, unless root=DIR


def digits_stage(arg: Optional[str], *, steps: int, seq_len: int, loss_tokens_per_row: int,
                 freeze: tuple, data_seed: int, max_crops: int,
                 sources: Dict[str, tuple]) -> ml_collections.ConfigDict:
  """One stage of the digits run (experiments/digits/) on the `digits` preset.

  What the two stages share: a short CPU run that checkpoints once at its end,
  AdamW at lr 3e-3, and a packed Grain pipeline over tools/make_digits.py's
  shards. `sources` maps a shard folder under ROOT/train to (weight, anyres).
  Knobs (`file.py:k=v,...`): root=DIR (tools/make_digits.py --output), steps=N,
  batch=B, workers=N (Grain worker processes; 0 = threads of the training
  process). The default, one worker process, measured faster on 2 cores than
  preparing batches in the training process, whose XLA threads it competes
  with (fine-tuning 0.29 -> 0.25 s/step, pre-training 0.375 -> 0.355 s/step;
  the same batches either way).
  """
  k = parse_arg(arg)
  root = k.get("root", DIGITS_ROOT)
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
      tokenizer="", reference_compatible=False))
  c.data.sources = ml_collections.ConfigDict({
      name: dict(paths=f"{root}/train/{name}", weight=weight, anyres=anyres)
      for name, (weight, anyres) in sources.items()})
  return c
