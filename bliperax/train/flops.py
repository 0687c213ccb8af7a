"""Analytic FLOPs of a training step (XLA's cost analysis counts a scanned layer once).

Counting multiply-adds as 2 FLOPs. For a dense layer applied to n tokens: 2·n·in·out.
Training costs 3× the forward (forward + backward wrt activations and weights) for
towers that train, 1× for a frozen tower behind a stop_gradient (the ViT).

  ViT, per crop of P patches, per layer: 2·P·(4·D² + 2·D·F) dense + 4·P²·D attention.
  Resampler, per group, per layer (L latents, P media keys, inner width I = heads·dh):
    2·L·D·I (q) + 2·(P+L)·D·2I (kv) + 2·L·I·D (out) + 2·L·2·D·mult·D (ff)
    + 4·L·(P+L)·I (scores and values); then 2·L·D·Dllm for the projection.
  LM, per token per layer: 2·(D·(N+2K)·H + N·H·D + 3·D·F) dense, plus causal attention
    4·H·N·w̄ with w̄ the mean number of keys a query sees (T/2 for causal, capped by
    the sliding window); plus 2·D·V for the head.

What a step does with each tower (`Training`): a tower whose weights train costs 3×
its forward; one whose base is frozen but that needs the loss's gradient (LoRA
adapters in it, or a trained tower before it) 2× (forward and the gradient wrt
activations), plus 3 · 2 FLOPs per adapter parameter per token it applies to; a
frozen tower with nothing trained before it 1×. DPO (`bliperax/train/dpo_step.py`)
encodes each pair's images once (the chosen rows' crops) and adds the reference's
forward: the LM on every row, and the vision side too unless the reference shares
the policy's vision tokens (LoRA in the LM only).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from bliperax.models.config import XGenMMConfig

# Peak dense bf16 FLOP/s per chip, for MFU.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,  # v6e (Trillium)
    "TPU v6e": 918e12,
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100": 312e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s for a jax `device_kind`, None when unknown (e.g. CPU)."""
  if device_kind in PEAK_FLOPS:
    return PEAK_FLOPS[device_kind]
  for name, value in PEAK_FLOPS.items():
    if device_kind.startswith(name):
      return value
  return None


def _unit_costs(cfg: XGenMMConfig) -> Dict[str, float]:
  """Forward FLOPs of one unit of work: a ViT crop, a resampler group, an LM token's
  dense layers, an LM head row, and one (query, key) pair of attention over all layers."""
  v, r, t = cfg.vision, cfg.resampler, cfg.text
  p = v.num_patches
  vit = v.depth * (2 * p * (4 * v.width ** 2 + 2 * v.width * v.mlp_dim) + 4 * p * p * v.width)
  vit += 2 * p * 3 * v.patch_size ** 2 * v.width  # patch embedding
  inner = r.num_heads * r.head_dim
  lat = r.num_latents
  res = r.depth * (2 * lat * r.width * inner + 2 * (p + lat) * r.width * 2 * inner
                   + 2 * lat * inner * r.width + 2 * lat * 2 * r.width * r.ff_mult * r.width
                   + 4 * lat * (p + lat) * inner)
  res += 2 * lat * r.width * r.out_width
  dense = 2 * (t.width * (t.num_heads + 2 * t.num_kv_heads) * t.head_dim
               + t.num_heads * t.head_dim * t.width + 3 * t.width * t.mlp_dim)
  return {"crop": vit, "group": res, "token": t.depth * dense,
          "head": 2 * t.width * t.logit_width, "key": t.depth * 4 * t.head_dim * t.num_heads}


TOWERS = ("vision", "resampler", "lm")  # in the order data flows through them
FULL, ADAPTERS, FROZEN = "full", "adapters", "frozen"


@dataclasses.dataclass(frozen=True)
class Training:
  """What a step trains, as far as its FLOPs go (module docstring).

  Attributes:
    vision, resampler, lm: FULL (the tower's weights train), ADAPTERS (a frozen base
      with trained LoRA adapters in it) or FROZEN.
    lm_adapter_params: adapter parameters in the LM (applied to every LM token).
    dpo: pair batches (rows 2i, 2i+1 share their images) and a reference forward.
    reference_shares_vision: DPO's reference reuses the policy's vision tokens.
  """
  vision: str = FROZEN
  resampler: str = FULL
  lm: str = FULL
  lm_adapter_params: int = 0
  dpo: bool = False
  reference_shares_vision: bool = False

  def multiplier(self, tower: str) -> float:
    """Forward passes' worth of FLOPs the policy spends in `tower` (1, 2 or 3)."""
    upstream = TOWERS[:TOWERS.index(tower) + 1]
    needs_gradient = any(getattr(self, t) != FROZEN for t in upstream)
    return 1.0 + needs_gradient + (getattr(self, tower) == FULL)

  @classmethod
  def of(cls, setup: Any) -> "Training":
    """For a `bliperax.train.setup.TrainSetup` (its config's freeze patterns, LoRA, DPO)."""
    from bliperax.convert import layout  # pylint: disable=g-import-not-at-top
    from bliperax.train import dpo_config  # pylint: disable=g-import-not-at-top
    from bliperax.train import optim  # pylint: disable=g-import-not-at-top
    cfg, lora = setup.cfg, setup.lora
    if lora is None:  # a tower trains when any of its parameters does
      labels = layout.flatten(optim.path_labels(setup.abstract_state.params,
                                                cfg.optim.get("freeze", ())))
      mode = {t: FULL if any(k.startswith(t + "/") and v == "train" for k, v in labels.items())
              else FROZEN for t in TOWERS}
      adapters = 0
    else:  # only the adapters train
      mode = {t: ADAPTERS if any(s.path.startswith(t + "/") for s in lora.plan) else FROZEN
              for t in TOWERS}
      flat = layout.flatten(setup.abstract_state.adapters)
      adapters = sum(int(np.prod(v.shape)) for k, v in flat.items() if k.startswith("lm/"))
    shares = lora is not None and all(s.path.startswith("lm/") for s in lora.plan)
    return cls(**mode, lm_adapter_params=adapters, dpo=dpo_config.enabled(cfg),
               reference_shares_vision=shares)


def step_flops(cfg: XGenMMConfig, batch: int, seq_len: int, crops_per_row: int,
               groups_per_row: int, training: Training = Training()) -> Dict[str, float]:
  """FLOPs of one training step on a [batch, seq_len] batch; per tower and 'total'.

  The planned count: every row full with one causal sequence (each query sees T/2
  keys on average) and `crops_per_row` / `groups_per_row` real crops and groups
  (with DPO, per pair row: the rows of a pair share them).
  `batch_flops` counts what a batch actually holds.
  """
  t = cfg.text
  keys = seq_len / 2 if t.sliding_window is None else min(seq_len / 2, t.sliding_window + 1)
  image_rows = batch // 2 if training.dpo else batch
  return _count(cfg, training, crops=image_rows * crops_per_row,
                groups=image_rows * groups_per_row, tokens=batch * seq_len,
                keys=batch * seq_len * keys, heads=batch * seq_len)


def _count(cfg: XGenMMConfig, training: Training, *, crops: float, groups: float,
           tokens: float, keys: float, heads: float) -> Dict[str, float]:
  """Per tower and 'total', from the real work units of a step (module docstring)."""
  u = _unit_costs(cfg)
  lm = u["token"] * tokens + u["key"] * keys + u["head"] * heads
  out = {"vision": training.multiplier("vision") * u["crop"] * crops,
         "resampler": training.multiplier("resampler") * u["group"] * groups,
         "lm": training.multiplier("lm") * lm + 6.0 * training.lm_adapter_params * tokens}
  if training.dpo:  # the reference's forward (vision on the pairs' images, once)
    out["lm"] += lm
    if not training.reference_shares_vision:
      out["vision"] += u["crop"] * crops
      out["resampler"] += u["group"] * groups
  out["total"] = sum(out.values())
  return out


def attended_keys(segment_ids: np.ndarray, sliding_window: Optional[int] = None) -> int:
  """Sum over real tokens of the keys each attends to under the packed causal mask.

  int32[B, T] segment ids (0 = padding; packed samples are contiguous runs of one
  id): a token at offset i of its sample sees i + 1 keys, at most window + 1.
  """
  total = 0
  for row in np.asarray(segment_ids).reshape(-1, np.shape(segment_ids)[-1]):
    ids = row[row > 0]
    if not ids.size:
      continue
    # Lengths of runs of one id (a packed sample).
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    for n in np.diff(np.r_[starts, ids.size]):
      n = int(n)
      if sliding_window is None or n <= sliding_window + 1:
        total += n * (n + 1) // 2
      else:
        w = sliding_window + 1  # the first w tokens see 1..w keys, the rest w each
        total += w * (w + 1) // 2 + (n - w) * w
  return total


def real_crops_and_groups(batch: Mapping[str, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
  """bool[B, C] real crops and bool[B, G] real groups of a batch.

  The host's bookkeeping (`crop_valid`, `group_valid`) when the batch carries it;
  else derived from what the model reads: a group is real when one of its vision
  tokens has a slot in the row (padding groups' slots are T, out of range), a crop
  when a real group attends to one of its features (`group_index` // patches).
  """
  if "crop_valid" in batch and "group_valid" in batch:
    return np.asarray(batch["crop_valid"], bool), np.asarray(batch["group_valid"], bool)
  slots = np.asarray(batch["vision_slots"])
  index, mask = np.asarray(batch["group_index"]), np.asarray(batch["group_mask"], bool)
  rows, groups, patches = index.shape
  length = np.shape(batch["segment_ids"])[1]
  group_valid = (slots.reshape(rows, groups, -1) < length).any(-1)
  crop_valid = np.zeros((rows, np.shape(batch["crops"])[1]), bool)
  used = mask & group_valid[:, :, None]
  row_of = np.broadcast_to(np.arange(rows)[:, None, None], index.shape)
  crop_valid[row_of[used], index[used] // patches] = True
  return crop_valid, group_valid


def batch_flops(cfg: XGenMMConfig, batch: Mapping[str, np.ndarray], *,
                training: Training = Training(),
                head_at_loss_only: bool = False) -> Dict[str, float]:
  """Model FLOPs of one training step on the batch that ran (host arrays).

  Counts real work only: real crops through the ViT and real groups through the
  resampler (`real_crops_and_groups`; with DPO the chosen rows' only, as the step
  encodes each pair's images once), non-padding tokens (`segment_ids > 0`) through the LM with
  attention within each packed sample (`attended_keys`), and the head on every real
  token, or on loss positions only (`labels != IGNORE`) when the step runs it there
  (`train.loss_tokens_per_row`). Packed rows with several images and crops count
  every one of them, where `step_flops` assumes one.
  """
  from bliperax.data.batch_spec import IGNORE  # pylint: disable=g-import-not-at-top
  crop_valid, group_valid = real_crops_and_groups(batch)
  if training.dpo:
    crop_valid, group_valid = crop_valid[0::2], group_valid[0::2]
  segments = np.asarray(batch["segment_ids"])
  tokens = int((segments > 0).sum())
  heads = int((np.asarray(batch["labels"]) != IGNORE).sum()) if head_at_loss_only else tokens
  return _count(cfg, training, crops=int(crop_valid.sum()), groups=int(group_valid.sum()),
                tokens=tokens, keys=attended_keys(segments, cfg.text.sliding_window),
                heads=heads)
