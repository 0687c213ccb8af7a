"""The `cfg.lora` block of an experiment config, and the target sets it names.

Fields:
  enabled: train adapters on a frozen base instead of the parameters themselves.
  targets: regexes over kernel paths ('/'-joined, as in the parameter tree, e.g.
    `lm/decoder/layers/self_attn/q_proj/kernel`, or `layers_3` when unscanned); a
    kernel gets an adapter when any of them matches (`re.search`).
  rank: r, the adapters' inner width.
  alpha: the update is scaled by alpha / rank (PEFT's `lora_alpha`, without rsLoRA).
  dropout: drop rate on an adapter's input during training (0 = off).
  base_dtype: '' keeps the base parameters' dtype; 'bfloat16' stores the frozen base
    in bf16 (half the memory; the layers still compute in `numerics.dtype`). The
    adapters and their optimizer state stay float32 either way.
"""
from __future__ import annotations

import ml_collections

# Every projection of every Phi-3 block: what PEFT calls qkv_proj, o_proj, gate_up_proj
# and down_proj on the HF model. Matches the scanned (`layers/`) and unscanned
# (`layers_{i}/`) layouts.
PHI3_ALL_LINEAR = (r"^lm/decoder/layers(_\d+)?/self_attn/(q|k|v|o)_proj/kernel$",
                   r"^lm/decoder/layers(_\d+)?/mlp/(gate|up|down)_proj/kernel$")
# Attention only, for smaller adapters.
PHI3_ATTENTION = (r"^lm/decoder/layers(_\d+)?/self_attn/(q|k|v|o)_proj/kernel$",)

BASE_DTYPES = ("", "float32", "bfloat16")


def defaults() -> ml_collections.ConfigDict:
  """LoRA off; when turned on, rank 64 on every Phi-3 projection.

  Rank 64 on all four HF projections is 2.63% of the 4B language model's parameters
  (bliperax/lora/count.py), near the paper's "about 2.5%"; alpha = 2 * rank is the
  usual PEFT choice, not a number the paper gives.
  """
  return ml_collections.ConfigDict(dict(
      enabled=False, targets=PHI3_ALL_LINEAR, rank=64, alpha=128.0, dropout=0.0,
      base_dtype=""))


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  """Whether an experiment config (the whole one) trains LoRA adapters."""
  lora = cfg.get("lora")
  return bool(lora is not None and lora.get("enabled", False))


def scale(lora: ml_collections.ConfigDict) -> float:
  """alpha / rank: the factor on B·A's contribution."""
  return float(lora.alpha) / int(lora.rank)


def check(lora: ml_collections.ConfigDict) -> None:
  """Raises ValueError on values no run can use."""
  if int(lora.rank) < 1:
    raise ValueError(f"lora.rank = {lora.rank}: must be at least 1")
  if not 0.0 <= float(lora.get("dropout", 0.0)) < 1.0:
    raise ValueError(f"lora.dropout = {lora.dropout}: must be in [0, 1)")
  if not lora.get("targets"):
    raise ValueError("lora.targets is empty: LoRA needs at least one kernel to adapt")
  if lora.get("base_dtype", "") not in BASE_DTYPES:
    raise ValueError(f"lora.base_dtype = {lora.base_dtype!r}: must be one of "
                     f"{', '.join(map(repr, BASE_DTYPES))}")
