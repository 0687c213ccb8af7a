"""LoRA adapters -> PEFT's format on the HF xGen-MM model (adapter_config.json +
adapter_model.safetensors).

PEFT's LoRA on an HF `nn.Linear` named M (weight [out, in]) is two tensors,

  base_model.model.M.lora_A.weight  [r, in]
  base_model.model.M.lora_B.weight  [out, r]

and adds (x·Aᵀ)·Bᵀ · lora_alpha / r to the Linear's output. M is the checkpoint name
of the weight without `.weight` (bliperax.convert.mapping), e.g.
`vlm.lang_model.model.layers.0.self_attn.qkv_proj`. The checkpoint fuses Phi-3's
q/k/v and gate/up; bliperax's adapters already share one A per fused Linear
(bliperax/lora/plan.py), so A is the shared one transposed and B stacks the members'
B's in the checkpoint's order, with zero rows for a member that has no adapter. The
result is exact: PEFT's model computes what the bliperax adapters compute.
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
from typing import Dict, List, Optional, Tuple

import numpy as np

from bliperax import atomic
from bliperax.convert import layout, mapping
from bliperax.convert.safetensors_io import CheckpointError, write_file
from bliperax.models import xgenmm
from bliperax.models.config import XGenMMConfig

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel wraps the HF model as base_model.model


def _module(rule: mapping.Rule) -> str:
  if rule.kind != "linear" or not rule.hf.endswith(".weight"):
    raise CheckpointError(f"{rule.hf}: not the weight of an HF Linear; PEFT cannot adapt it")
  return rule.hf[:-len(".weight")]


@functools.lru_cache(maxsize=4)
def _out_sizes(cfg: XGenMMConfig) -> Dict[str, int]:
  """{unscanned Dense module path: its output width} for every linear rule's parts."""
  shapes = {k: tuple(v.shape) for k, v in
            layout.flatten(xgenmm.abstract_params(cfg.with_numerics(scan_layers=False))).items()}
  return {p[:-len("/kernel")]: math.prod(shapes[p][rule.n_in:])
          for rule in mapping.xgenmm_rules(cfg) if rule.kind == "linear" for p in rule.paths}


def tensors(adapters: dict, cfg: XGenMMConfig) -> List[Tuple[str, np.ndarray]]:
  """(PEFT name, float32 array) for every adapted HF Linear, in checkpoint order.

  Args:
    adapters: the adapter tree (nested, or flat with '/'-joined paths; scanned or not).
    cfg: the model config.
  Raises:
    CheckpointError: an adapter has no HF Linear, or the parts of one fused Linear have
      A's of their own (not one PEFT LoRA).
  """
  flat = {k: np.asarray(v, np.float32) for k, v in layout.flatten(adapters).items()}
  if layout.is_scanned(flat):
    flat = layout.unstack_layers(flat)
  widths = _out_sizes(cfg.with_numerics(scan_layers=False))
  used, out = set(), []
  for rule in mapping.xgenmm_rules(cfg.with_numerics(scan_layers=False)):
    if rule.kind != "linear":
      continue
    parts = [p[:-len("/kernel")] for p in rule.paths]
    adapted = [m for m in parts if f"{m}/lora_b" in flat]
    if not adapted:
      continue
    module, owner = _module(rule), adapted[0]
    if f"{owner}/lora_a" not in flat or any(f"{m}/lora_a" in flat for m in adapted[1:]):
      raise CheckpointError(f"{module}: its parts {', '.join(adapted)} do not share one "
                            "lora_a (PEFT adapts a fused Linear with a single A)")
    a = flat[f"{owner}/lora_a"]  # [*I, r]
    r = a.shape[-1]
    # B [out, r]: each part's rows in checkpoint order, zeros for a part without adapter.
    rows = [flat[f"{m}/lora_b"].reshape(r, -1).T if m in adapted
            else np.zeros((widths[m], r), np.float32) for m in parts]
    out.append((f"{PREFIX}{module}.lora_A.weight", np.ascontiguousarray(a.reshape(-1, r).T)))
    out.append((f"{PREFIX}{module}.lora_B.weight", np.ascontiguousarray(np.concatenate(rows))))
    used.update([f"{owner}/lora_a"] + [f"{m}/lora_b" for m in adapted])
  left = sorted(set(flat) - used)
  if left:
    raise CheckpointError(f"adapters without an HF Linear: {', '.join(left[:5])}")
  return out


def adapter_config(names: List[str], rank: int, alpha: float, dropout: float,
                   base_model: Optional[str] = None) -> dict:
  """PEFT's LoraConfig fields for the exported tensors (plain LoRA: no rsLoRA, DoRA,
  biases or per-module ranks); `target_modules` lists the adapted modules by full name,
  so nothing else on the model can match."""
  modules = sorted({n[len(PREFIX):].rsplit(".lora_", 1)[0] for n in names})
  return {
      "peft_type": "LORA",
      "r": rank,
      "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
      "lora_dropout": dropout,
      "target_modules": modules,
      "bias": "none",
      "fan_in_fan_out": False,
      "use_rslora": False,
      "use_dora": False,
      "init_lora_weights": True,
      "rank_pattern": {},
      "alpha_pattern": {},
      "modules_to_save": None,
      "inference_mode": True,
      "task_type": None,
      "base_model_name_or_path": base_model,
  }


def save(dst: os.PathLike, adapters: dict, cfg: XGenMMConfig, rank: int, alpha: float,
         dropout: float = 0.0, base_model: Optional[str] = None,
         overwrite: bool = False) -> pathlib.Path:
  """Writes `dst`/adapter_config.json and `dst`/adapter_model.safetensors (float32);
  `dst` appears only when complete. `PeftModel.from_pretrained(hf_model, dst)` loads it.

  Raises:
    CheckpointError: `dst` is in the way, or the adapters do not map (see `tensors`).
  """
  dst = pathlib.Path(dst)
  if atomic.is_occupied(dst) and not overwrite:
    raise CheckpointError(f"{dst}: exists and is not empty (pass overwrite to replace it)")
  named = tensors(adapters, cfg)
  config = adapter_config([n for n, _ in named], rank, alpha, dropout, base_model)
  with atomic.atomic_directory(dst) as tmp:
    write_file(tmp / WEIGHTS_NAME, [(n, t.dtype, t.shape) for n, t in named], iter(named))
    (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
  return dst
