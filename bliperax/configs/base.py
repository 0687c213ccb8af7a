"""The base training config every experiment starts from (ml_collections).

Experiments (`experiments/**.py`) call `base(preset)` and override fields; `parse_arg`
reads the `file.py:k=v,k2=v2` knobs that config_flags passes as `get_config(arg)`.
Every config has top-level total_steps, log_every and checkpoint_every;
`model_config` turns its `model` section into the model's own config.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import ml_collections

from bliperax.lora import config as lora_config
from bliperax.train import dpo_config
from bliperax.models import presets
from bliperax.models.config import XGenMMConfig


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
  # Shape changes to the preset for ablations (unset = the preset's): visual tokens
  # per crop (`--config.model.resampler.num_latents=64`, or a sweep's override).
  c.model.resampler = ml_collections.ConfigDict(dict(
      num_latents=ml_collections.config_dict.placeholder(int)))

  # Per-slice axis sizes, and the factors across slices (DCN) of a multi-slice run:
  # `python -m bliperax.launch --num_slices=N` sets dcn_data=N (bliperax/sharding.py).
  c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, dcn_data=1, dcn_fsdp=1,
                                          dcn_tensor=1))
  c.rules = ()  # () = bliperax.sharding.DEFAULT_RULES; else ((logical, mesh axes), ...)
  # LoRA adapters on a frozen base (bliperax/lora/config.py; off unless enabled).
  c.lora = lora_config.defaults()
  # DPO on preference pairs (bliperax/train/dpo_config.py; off unless enabled).
  c.dpo = dpo_config.defaults()

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


def model_config(cfg: ml_collections.ConfigDict) -> XGenMMConfig:
  """The model preset of `cfg.model.preset` with `cfg.model.numerics` and the set
  fields of `cfg.model.resampler` applied."""
  numerics = dict(cfg.model.get("numerics", {}))
  model = presets.get(cfg.model.preset, **numerics)
  resampler = {k: v for k, v in dict(cfg.model.get("resampler", {})).items()
               if v is not None}
  if resampler:
    unknown = sorted(set(resampler) - {f.name for f in dataclasses.fields(model.resampler)})
    if unknown:
      raise ValueError(f"config model.resampler: unknown field(s) {', '.join(unknown)}")
    model = dataclasses.replace(model, resampler=dataclasses.replace(model.resampler,
                                                                     **resampler))
  return model
