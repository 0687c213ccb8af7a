"""The `cfg.dpo` block of an experiment config (no jax: the host pipeline reads it too).

Fields:
  enabled: train with the DPO objective on preference pairs instead of next-token
    cross-entropy. The data pipeline then emits pair batches (bliperax/data/pairs.py)
    and the trainer runs bliperax/train/dpo_step.py.
  beta: β, the strength of the implicit KL penalty towards the reference model.
  label_smoothing: ε of conservative DPO (cDPO): the pair's label is taken to be
    wrong with probability ε; 0 is plain sigmoid DPO.
  rpo_alpha: α of RPO's extra term, α times the chosen answer's mean NLL per pair
    (bliperax/train/dpo.py); 0 (the default) is plain DPO.

The reference model is the frozen SFT model, never a field: with LoRA
(`cfg.lora.enabled`) it is the frozen base the adapters sit on, otherwise a frozen
copy of the initial parameters kept in the train state (dpo_step.py says why).
"""
from __future__ import annotations

import ml_collections


def defaults() -> ml_collections.ConfigDict:
  """DPO off; when turned on, β 0.1 (the DPO paper's usual value) without smoothing."""
  return ml_collections.ConfigDict(dict(enabled=False, beta=0.1, label_smoothing=0.0,
                                       rpo_alpha=0.0))


def enabled(cfg: ml_collections.ConfigDict) -> bool:
  """Whether an experiment config (the whole one) trains with DPO."""
  dpo = cfg.get("dpo")
  return bool(dpo is not None and dpo.get("enabled", False))


def check(cfg: ml_collections.ConfigDict) -> None:
  """Raises ValueError on DPO values no run can use (call when `enabled(cfg)`).

  A pair is two adjacent rows, so the global batch must be even, and gradient
  accumulation splits whole pairs: the pairs per batch must divide by it.
  """
  dpo = cfg.dpo
  if float(dpo.beta) <= 0:
    raise ValueError(f"dpo.beta = {dpo.beta}: must be positive")
  if not 0.0 <= float(dpo.get("label_smoothing", 0.0)) < 0.5:
    raise ValueError(f"dpo.label_smoothing = {dpo.label_smoothing}: must be in [0, 0.5)")
  if float(dpo.get("rpo_alpha", 0.0)) < 0:
    raise ValueError(f"dpo.rpo_alpha = {dpo.rpo_alpha}: must be at least 0")
  rows = int(cfg.train.global_batch)
  accum = int(cfg.train.get("accum_steps", 1))
  if rows % 2:
    raise ValueError(f"train.global_batch = {rows}: DPO needs an even number of rows "
                     "(a chosen and a rejected row per pair row)")
  if (rows // 2) % accum:
    raise ValueError(f"train.global_batch = {rows} holds {rows // 2} pair rows, not "
                     f"divisible by train.accum_steps = {accum}")
